"""How a `loadtest` visitor reaches the app: through gradio_client, as a Python caller does, or with
the requests the page's own JavaScript makes."""

from __future__ import annotations

import http.client
import json
import uuid
from pathlib import Path
from urllib.parse import urlparse


def talk_settings(max_tokens: int) -> tuple:
    """The /talk inputs after the clip and the text: default system, temperature, top-p, max
    tokens, greedy, seed (greedy, so a replayed conversation gets the same replies)."""
    return None, 0.5, 0.5, max_tokens, True, 0


class GradioClientLine:
    """Turns through gradio_client, as a Python caller of the app's API makes them."""

    def __init__(self, url: str):
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})

    def new_conversation(self) -> None:
        """An API caller's new conversation: a new session (its chat lives in the session)."""
        self.client.reset_session()

    def attach(self, audio: str):
        """The clip as gradio_client takes it; it uploads the file inside the call, so an API
        caller's turn includes its upload."""
        from gradio_client import handle_file

        return handle_file(audio)

    def talk(self, clip, text: str, max_tokens: int) -> list[dict]:
        """The conversation the app returns after this turn (greedy, the default system)."""
        job = self.client.submit(clip, text, *talk_settings(max_tokens), api_name="/talk")
        return job.result()[0]

    def close(self) -> None:
        self.client.close()


class PageLine:
    """Turns as the page's JavaScript makes them: upload, join the queue, read the events as they arrive.

    Through the standard library's `http.client`, which takes less CPU than httpx: the visitors share
    the machine with the app they time (docs/serving.md).
    """

    def __init__(self, url: str):
        parts = urlparse(url)
        self.root, self.address = parts.path or "/", (parts.hostname, parts.port or 80)
        config = json.loads(self._request("GET", "config"))
        events = {d.get("api_name"): d for d in config["dependencies"]}
        if "talk" not in events or "clear" not in events:
            raise ValueError(f"{url} has no /talk and Clear events: is it this project's app.py?")
        kinds = {c["id"]: c["type"] for c in config["components"]}
        self.talk_index, self.clear_index = events["talk"]["id"], events["clear"]["id"]
        self.stateful = [kinds.get(i) == "state" for i in events["talk"]["inputs"]]
        self.on_load = [d for d in config["dependencies"] if any(trigger == "load" for _, trigger in d["targets"])]
        self.new_session()

    def new_session(self) -> None:
        """What the page does when it loads: draw a session id and run the page's load events."""
        self.session, self.talked = uuid.uuid4().hex[:12], False
        for event in self.on_load:  # the app's one has Gradio build the session now, not in the first turn
            if event.get("queue") is False:
                self._request(
                    "POST",
                    "gradio_api/run/predict",
                    json.dumps(
                        {
                            "data": [],
                            "fn_index": event["id"],
                            "session_hash": self.session,
                            "event_data": None,
                            "trigger_id": None,
                        }
                    ).encode(),
                    {"Content-Type": "application/json"},
                )
            else:
                self._event(event["id"], [])

    def new_conversation(self) -> None:
        """A visitor's new conversation: Clear, on the page it already has open (one session)."""
        if self.talked:
            self._event(self.clear_index, [])

    def attach(self, audio: str) -> dict:
        """Upload the clip, as the page does when a recording stops or a file is dropped: before
        Send, which the page refuses while an upload runs (tests/test_app.py's browser test)."""
        return self._upload(audio)

    def talk(self, clip: dict | None, text: str, max_tokens: int) -> list[dict]:
        values = iter([clip, text, *talk_settings(max_tokens)])
        data = [None if state else next(values) for state in self.stateful]  # the server fills in the state
        self.talked = True
        return self._event(self.talk_index, data)[0]

    def _event(self, fn_index: int, data: list) -> list:
        """Join the queue with one event and read its messages until it completes; its output values."""
        joined = self._request(
            "POST",
            "gradio_api/queue/join",
            json.dumps(
                {
                    "data": data,
                    "fn_index": fn_index,
                    "session_hash": self.session,
                    "event_data": None,
                    "trigger_id": None,
                }
            ).encode(),
            {"Content-Type": "application/json"},
        )
        event = json.loads(joined)["event_id"]
        connection = self._connection()
        try:
            events = self._send(connection, "GET", f"gradio_api/queue/data?session_hash={self.session}")
            while line := events.readline():
                message = json.loads(line[5:]) if line.startswith(b"data:") else {}
                if message.get("event_id") == event and message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(str(message.get("output", {}).get("error")))
                    return message["output"]["data"]
        finally:
            connection.close()
        raise RuntimeError("the server closed the event stream before the event completed")

    def _upload(self, path: str) -> dict:
        boundary, name = uuid.uuid4().hex, Path(path).name
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                f"Content-Type: audio/wav\r\n\r\n".encode(),
                Path(path).read_bytes(),
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        answer = self._request(
            "POST", "gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        return {"path": json.loads(answer)[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    def _request(self, method: str, route: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        connection = self._connection()
        try:
            return self._send(connection, method, route, body, headers).read()
        finally:
            connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        """A new connection for each request: the server closes an idle one after 5 s, about a
        visitor's pause, and the standard library would only find out by failing to send on it."""
        return http.client.HTTPConnection(*self.address, timeout=120)

    def _send(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        route: str,
        body: bytes | None = None,
        headers: dict | None = None,
    ) -> http.client.HTTPResponse:
        """The answer to one request, to read; anything but 200 raises, naming the route and the status."""
        connection.request(method, self.root + route, body, headers or {})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{route} answered {response.status}: {response.read(200).decode(errors='replace')}")
        return response

    def close(self) -> None:
        """Nothing to close: no connection outlives its request."""
