"""`python -m blsp_emo loadtest`: simulated visitors talking to a running app at once, as pages or API callers.

Each visitor keeps having short conversations (a spoken turn with its own clip, then typed turns
naming the visitor), greedy so that a conversation replayed gives the same replies. A page visitor
keeps its one session and presses Clear between conversations, as a person on the page does; a
gradio_client caller starts a new session for each (its conversation lives in the session). After
every turn a visitor checks that the conversation the server returns is exactly its own: its clip,
its words, in order, one reply per turn. Anything else counts as cross-talk. One visitor
alone and all of them together take turns against the same server, in `--rounds` alternating slices
of each phase's time: a shared machine's speed drifts by more than the load changes it (the
single-visitor median moved between 0.07 and 0.11 s from one run to the next), so the two
phases are measured side by side. Each phase also reports how many of its turns ran while another
did and what those took, and the CPU a turn cost the load test itself, the server and its model
workers (the last two with `--spawn`). On a virtual machine it also reports the CPU time the
hypervisor took from the machine ("steal" in /proc/stat) and which turns ran while it did: such a
turn waits for CPU that no code of ours uses. Loopback addresses only; visitors, time and requests
are bounded.

`--spawn` starts `python app.py` itself on a free loopback port, times it from process start until
`/` answers 200, samples its resident memory while the visitors talk, and stops it.

`--client` picks how a visitor talks to the app: `gradio_client` (its Python client), or `page`:
the requests the page's own JavaScript makes (run the page's load event when it opens, upload the
clip, join the queue, read the server-sent events as they arrive). gradio_client hands each server
message to the waiting caller from a queue it polls every 50 ms, which adds about 0.1 s to a turn
that a page does not wait for; `page` measures what the browser sees. A turn's time runs from
Send to its last message. The page uploads a clip when its recording stops (or the file is
dropped) and refuses Send until the upload is done, so a page visitor's turn starts after its
upload; gradio_client uploads inside the call, so its turns include theirs.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_USERS, MAX_SECONDS = 64, 600.0
CLIENTS = ("gradio_client", "page")
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LoadOptions:
    users: int = 8
    seconds: float = 30.0  # per phase, over all rounds
    think: float = 0.0  # mean pause between a visitor's turns (uniform in 0.5x..1.5x; first turn within [0, think])
    turns: int = 3  # per conversation, then a fresh session
    max_tokens: int = 48  # per reply; the app's slider accepts 8..1024
    client: str = "gradio_client"  # how visitors talk to the app: one of CLIENTS
    rounds: int = 1  # alternating slices: alone, together, alone, together, ...

    def __post_init__(self):
        if not 1 <= self.rounds <= self.seconds:
            raise ValueError(
                f"--rounds must be 1..{self.seconds:g} (a slice lasts at least a second), got {self.rounds}"
            )
        if self.client not in CLIENTS:
            raise ValueError(f"--client must be one of {CLIENTS}, got {self.client!r}")
        if not 1 <= self.users <= MAX_USERS or not 0 < self.seconds <= MAX_SECONDS:
            raise ValueError(
                f"--users must be 1..{MAX_USERS} and --seconds in (0, {MAX_SECONDS:g}]; "
                f"got {self.users} and {self.seconds:g}"
            )
        if self.think < 0 or self.turns < 1:
            raise ValueError(f"--think must be >= 0 and --turns >= 1; got {self.think:g} and {self.turns}")


@dataclass
class Phase:
    """What one phase (N visitors for S seconds) saw."""

    users: int
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each turn: Send to final output
    stolen: list[float] = field(default_factory=list)  # per turn (as spans): CPU s the hypervisor took meanwhile
    spoken: list[float] = field(default_factory=list)  # seconds of the turns that sent a clip
    typed: list[float] = field(default_factory=list)  # ... of the others
    errors: list[str] = field(default_factory=list)
    cross_talk: list[str] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # per turn (as spans): the round of the slice it was sent in
    round: int = 0  # the round of the slice running now
    slice_stolen: list[float] = field(default_factory=list)  # per slice: CPU s the hypervisor took meanwhile
    replays: int = 0  # conversations replayed by the same visitor
    replay_mismatches: int = 0  # ... whose replies differed from the first time (greedy: they should not)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds spent during this phase's slices, by process
    # (and "stolen": what the hypervisor took from the whole machine meanwhile)

    def add_cpu(self, before: dict[str, float], after: dict[str, float]) -> None:
        """Count one slice's CPU (`cpu()` before and after it)."""
        for name in after.keys() & before.keys():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + after[name] - before[name]
        self.slice_stolen.append(after.get("stolen", 0.0) - before.get("stolen", 0.0))

    @property
    def latencies(self) -> list[float]:
        """Seconds per turn, in the order the turns ended."""
        return [end - start for start, end in self.spans]

    def by_round(self, rounds: int) -> list[list[float]]:
        """Seconds per turn, grouped by the round they were sent in (`rounds` groups)."""
        groups: list[list[float]] = [[] for _ in range(rounds)]
        for seconds, sent_in in zip(self.latencies, self.rounds):
            groups[sent_in].append(seconds)
        return groups

    def summary(self) -> dict:
        durations, overlapped = self.latencies, _overlapping(self.spans)
        lat = sorted(durations)
        alone = [d for i, d in enumerate(durations) if i not in overlapped]
        robbed = {i for i, s in enumerate(self.stolen) if s > 0}
        spared = [d for i, d in enumerate(durations) if i not in robbed]
        return {
            "users": self.users,
            "turns": len(lat),
            "errors": len(self.errors),
            "cross_talk": len(self.cross_talk),
            "p50_s": _percentile(lat, 50),
            "p95_s": _percentile(lat, 95),
            "max_s": lat[-1] if lat else None,
            "spoken_turns": len(self.spoken),
            "spoken_p50_s": _percentile(self.spoken, 50),
            "spoken_p95_s": _percentile(self.spoken, 95),
            "typed_p50_s": _percentile(self.typed, 50),
            "typed_p95_s": _percentile(self.typed, 95),
            "overlapped_turns": len(overlapped),
            "alone_p50_s": _percentile(alone, 50),
            "overlapped_p50_s": _percentile([durations[i] for i in overlapped], 50),
            "stolen_turns": len(robbed),
            "stolen_p50_s": _percentile([durations[i] for i in robbed], 50),
            "unstolen_p50_s": _percentile(spared, 50),
            "unstolen_p95_s": _percentile(spared, 95),
            "cpu_ms_per_turn": {k: 1e3 * v / len(lat) for k, v in sorted(self.cpu_s.items())} if lat else {},
            "replays": self.replays,
            "replay_mismatches": self.replay_mismatches,
            "error_examples": self.errors[:3],
            "cross_talk_examples": self.cross_talk[:3],
        }


def _overlapping(spans: list[tuple[float, float]]) -> set[int]:
    """The indices of the turns that ran while another turn of the phase ran."""
    order = sorted(range(len(spans)), key=lambda i: spans[i][0])
    found, latest_end, latest = set(), float("-inf"), None
    for i in order:
        start, end = spans[i]
        if start < latest_end:  # began before the longest-running earlier turn ended
            found.update((i, latest))
        if end > latest_end:
            latest_end, latest = end, i
    return found


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q, method="nearest"))


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"loadtest only targets this machine; {url!r} is not a loopback address (use 127.0.0.1)")
    return url


# --- how a visitor reaches the app ----------------------------------------------------------------


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


# --- one visitor --------------------------------------------------------------------------------


class Visitor:
    """A session that talks in turns and checks that what comes back is its own conversation."""

    def __init__(self, url: str, index: int, clip: Path, options: LoadOptions, phase: Phase, lock: threading.Lock):
        self.index, self.clip, self.options, self.phase, self.lock = index, clip, options, phase, lock
        self.rng = random.Random(index)  # reproducible pauses, different per visitor
        self.line = GradioClientLine(url) if options.client == "gradio_client" else PageLine(url)
        self.first_replies: list[str] | None = None

    def script(self) -> list[tuple[str | None, str]]:
        """(audio, text) per turn: the visitor's own clip first, then typed turns naming it."""
        return [(str(self.clip), "")] + [(None, f"visitor {self.index} turn {t}") for t in range(1, self.options.turns)]

    def converse(self, deadline: float) -> None:
        self.line.new_conversation()
        sent, replies = [], []
        for audio, text in self.script():
            if time.monotonic() >= deadline:
                return
            try:
                clip = self.line.attach(audio) if audio else None  # the page's upload comes before Send
                start, stolen = time.monotonic(), machine_stolen_s()
                chatbot = self.line.talk(clip, text, self.options.max_tokens)
            except Exception as e:  # a visitor sees an error message; count it and keep going
                self._record(error=f"visitor {self.index}: {type(e).__name__}: {str(e)[:200]}")
                time.sleep(0.5)  # and tries again a little later, as a person would
                return
            sent.append((audio, text))
            problem = self._foreign(chatbot, sent)
            self._record(
                span=(start, time.monotonic()),
                cross_talk=problem,
                spoken=audio is not None,
                stolen=machine_stolen_s() - stolen,
            )
            if problem:
                return
            replies.append(_text(chatbot[-1]))
            self._pause(0.5, 1.5)
        self._compare_replay(replies)

    def _pause(self, low: float, high: float) -> None:
        """Think time: people record, type and read at their own pace, so visitors do not move in lockstep."""
        if self.options.think:
            time.sleep(self.rng.uniform(low, high) * self.options.think)

    def _foreign(self, chatbot: list[dict], sent: list[tuple[str | None, str]]) -> str | None:
        """Why `chatbot` is not this visitor's conversation, or None."""
        if len(chatbot) != 2 * len(sent):
            return f"visitor {self.index}: {len(chatbot)} messages after {len(sent)} turns"
        for (audio, text), message in zip(sent, chatbot[::2]):
            parts = message["content"] if isinstance(message["content"], list) else [message["content"]]
            if audio is not None:
                files = [p for p in parts if isinstance(p, dict) and p.get("type") == "file"]
                name = Path(str(files[0]["file"].get("path", ""))).name if files else None
                if name != self.clip.name:
                    return f"visitor {self.index}: its clip came back as {name!r}"
            elif _text(message) != text:
                return f"visitor {self.index}: sent {text!r}, the conversation shows {_text(message)!r}"
        return None

    def _compare_replay(self, replies: list[str]) -> None:
        if len(replies) != self.options.turns:
            return
        with self.lock:
            if self.first_replies is None:
                self.first_replies = replies
            else:
                self.phase.replays += 1
                self.phase.replay_mismatches += replies != self.first_replies

    def _record(
        self,
        span: tuple[float, float] | None = None,
        error: str | None = None,
        cross_talk: str | None = None,
        spoken: bool = False,
        stolen: float = 0.0,
    ):
        with self.lock:
            if span is not None:
                self.phase.spans.append(span)
                self.phase.stolen.append(stolen)
                self.phase.rounds.append(self.phase.round)
                (self.phase.spoken if spoken else self.phase.typed).append(span[1] - span[0])
            if error:
                self.phase.errors.append(error)
            if cross_talk:
                self.phase.cross_talk.append(cross_talk)

    def run(self, deadline: float) -> None:
        """Converse until `deadline` (a turn already sent finishes); the next slice starts a new conversation."""
        self._pause(0.0, 1.0)  # visitors arrive at different moments
        while time.monotonic() < deadline:
            self.converse(deadline)


def _text(message: dict) -> str:
    content = message["content"]
    parts = content if isinstance(content, list) else [content]
    return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts).strip()


def visitor_clips(folder: Path, users: int, examples: Path = ROOT / "assets" / "examples") -> list[Path]:
    """One distinct clip per visitor (an example clip, slightly rescaled so no two are the same file)."""
    import soundfile as sf

    from blsp_emo.audio import load_audio

    sources = sorted(examples.glob("*.wav")) if examples.is_dir() else []
    paths = []
    for i in range(users):
        if sources:
            wave = load_audio(sources[i % len(sources)])
        else:
            t = np.arange(32000) / 16000
            wave = (0.3 * np.sin(2 * np.pi * (160 + 15 * i) * t)).astype(np.float32)
        path = folder / f"visitor{i}.wav"
        sf.write(path, wave * (1.0 - 0.01 * i), 16000)
        paths.append(path)
    return paths


def warm_up(url: str, options: LoadOptions, clip: Path) -> None:
    """One unmeasured conversation: a server's first spoken turn pays for lazy set-up (about 1 s here)."""
    visitor = Visitor(url, 0, clip, replace(options, think=0.0), Phase(1), threading.Lock())
    visitor.converse(time.monotonic() + 120)
    visitor.line.close()


def visitors(url: str, users: int, options: LoadOptions, clips: list[Path]) -> list[Visitor]:
    phase, lock = Phase(users), threading.Lock()
    return [Visitor(url, i, clips[i], options, phase, lock) for i in range(users)]


def run_slice(crowd: list[Visitor], seconds: float) -> None:
    """Every visitor of `crowd` talks for `seconds`, each in its own thread."""
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=v.run, args=(deadline,), daemon=True) for v in crowd]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 180)  # a turn already sent may finish after the deadline


# --- a server started for the test --------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    startup_s: float
    peak_rss_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample_memory(self, every: float = 0.2, rewalk: float = 1.0) -> None:
        """Keep `peak_rss_mb` up to date: the tree's memory every `every` s, the tree itself (a worker
        that died is replaced by a new process) every `rewalk` s, since walking it costs 50 times more."""

        def loop():
            pids, walked = [], float("-inf")
            while not self._stop.is_set():
                if time.monotonic() - walked >= rewalk:
                    pids, walked = process_tree(self.process.pid), time.monotonic()
                self.peak_rss_mb = max(self.peak_rss_mb, sum(process_rss_mb(pid) for pid in pids))
                time.sleep(every)

        threading.Thread(target=loop, daemon=True).start()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the server's process and, together, of its model workers."""
        return {
            "server": process_cpu_s(self.process.pid),
            "workers": sum(process_cpu_s(child) for child in child_pids(self.process.pid)),
        }

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def process_rss_mb(pid: int) -> float:
    """Resident memory of `pid` (0 once it has ended), from /proc's one-line statm."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds of `pid` (0 once it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ...
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_stolen_s() -> float:
    """CPU seconds the hypervisor has taken from this machine, all its CPUs together (/proc/stat's
    steal, counted in 10 ms ticks); 0 where nothing counts it (no VM, not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_rss_mb(pid: int) -> float:
    """The resident memory of `pid` and of every process under it (the app's model workers)."""
    return sum(process_rss_mb(p) for p in process_tree(pid))


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it."""
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo.extend(child_pids(current))
    return tree


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started, from the kernel's per-thread lists.

    The memory sampler walks the tree beside the visitors it times, so it reads the few files of
    the app's own threads rather than the status of every process on the machine.
    """
    children = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children.extend(int(child) for child in listing.read_text().split())
        except OSError:  # the thread ended while we looked
            continue
    return children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:g} s")


def spawn_app(args: tuple[str, ...] = (), log: Path | None = None) -> Server:
    """`python app.py` on a free loopback port; `startup_s` runs from process start to HTTP 200 on /."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    out = open(log, "w") if log else subprocess.DEVNULL
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process)
    except Exception:
        process.kill()
        raise
    return Server(process, url, time.monotonic() - start)


# --- the command --------------------------------------------------------------------------------


def loadtest(url: str, options: LoadOptions, server_cpu: Callable[[], dict[str, float]] | None = None) -> dict:
    """One visitor alone and `options.users` at once, in alternating slices; their latencies and the
    ratio the issue asks for (concurrent p95 over single p50).

    Each phase also reports the CPU its turns cost: this process's (the load test's own, which shares
    the machine with the app), and with `server_cpu` (a spawned app's `Server.cpu_s`) the server's
    and its workers'. On a shared machine CPU time per turn moves far less than latency does.
    """
    check_loopback(url)

    def cpu() -> dict[str, float]:
        return {"load_test": time.process_time(), **(server_cpu() if server_cpu else {}), "stolen": machine_stolen_s()}

    with tempfile.TemporaryDirectory() as tmp:
        clips = visitor_clips(Path(tmp), options.users)
        warm_up(url, options, clips[0])
        phases = [visitors(url, 1, options, clips), visitors(url, options.users, options, clips)]
        try:
            for round_ in range(options.rounds):
                for crowd in phases:
                    crowd[0].phase.round, before = round_, cpu()
                    run_slice(crowd, options.seconds / options.rounds)
                    crowd[0].phase.add_cpu(before, cpu())
        finally:
            for visitor in (v for crowd in phases for v in crowd):
                visitor.line.close()
        alone, together = (crowd[0].phase.summary() for crowd in phases)
    return {
        "url": url,
        "options": asdict(options),
        "single": alone,
        "concurrent": together,
        "p95_over_single_p50": _ratio(together["p95_s"], alone["p50_s"]),
        "spoken_p95_over_single_p50": _ratio(together["spoken_p95_s"], alone["spoken_p50_s"]),
        "typed_p95_over_single_p50": _ratio(together["typed_p95_s"], alone["typed_p50_s"]),
        # The same ratio over the turns during which the hypervisor took no CPU, in both phases: what
        # the app's own contention does, apart from the host's (the target is the ratio above).
        "unstolen_p95_over_single_p50": _ratio(together["unstolen_p95_s"], alone["unstolen_p50_s"]),
        "p95_over_single_p50_90ci": ratio_interval(*(crowd[0].phase.by_round(options.rounds) for crowd in phases)),
        "rounds": round_summaries(phases[0][0].phase, phases[1][0].phase, options.rounds),
    }


def round_summaries(alone: Phase, together: Phase, rounds: int) -> list[dict]:
    """Each round's pair of slices: their turns, the ratio's two terms, and the CPU the hypervisor
    took during each slice, to show which rounds the machine slowed and by how much."""
    out = []
    for r, (single, crowd) in enumerate(zip(alone.by_round(rounds), together.by_round(rounds))):
        p50, p95 = _percentile(single, 50), _percentile(crowd, 95)
        out.append(
            {
                "single_turns": len(single),
                "single_p50_s": p50,
                "concurrent_turns": len(crowd),
                "concurrent_p95_s": p95,
                "p95_over_single_p50": _ratio(p95, p50),
                "single_stolen_s": _at(alone.slice_stolen, r),
                "concurrent_stolen_s": _at(together.slice_stolen, r),
            }
        )
    return out


def _at(values: list[float], index: int) -> float | None:
    return values[index] if index < len(values) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratio_interval(
    single: list[list[float]], crowd: list[list[float]], level: float = 0.9, draws: int = 4000, seed: int = 0
) -> list[float] | None:
    """A bootstrap interval for p95(crowd) / p50(single), from each phase's turns grouped by round:
    how far the ratio could move on the same machine in another run of as many rounds.

    Two stages: the rounds with replacement, the same ones for both phases (their slices ran side by
    side, so they share the machine's speed at the time), then the turns within each drawn round.
    The machine's speed drifts from one round to the next, so the turns of a round are not
    independent draws: resampling turns alone would understate the doubt. The single phase's few
    turns per slice set most of it. With one round it is a plain bootstrap of the turns.
    """
    pairs = [(np.asarray(s, float), np.asarray(c, float)) for s, c in zip(single, crowd) if len(s) or len(c)]
    if not any(len(s) for s, _ in pairs) or not any(len(c) for _, c in pairs):
        return None
    rng, ratios = np.random.default_rng(seed), []
    for _ in range(draws):
        drawn = [pairs[i] for i in rng.integers(len(pairs), size=len(pairs))]
        alone = np.concatenate([rng.choice(s, len(s)) for s, _ in drawn])
        together = np.concatenate([rng.choice(c, len(c)) for _, c in drawn])
        if len(alone) and len(together):  # else every drawn round lacked one phase's turns: no ratio
            ratios.append(np.percentile(together, 95, method="nearest") / np.percentile(alone, 50, method="nearest"))
    low, high = np.percentile(ratios, [50 * (1 - level), 50 * (1 + level)])
    return [float(low), float(high)]


def format_report(report: dict) -> Iterator[str]:
    if "startup_s" in report:
        yield (
            f"app ready (HTTP 200 on /) {report['startup_s']:.2f} s after process start; peak RSS of the server "
            f"and its workers {report['server_peak_rss_mb']:.0f} MB"
        )
    o = report["options"]
    yield (
        f"{report['url']}: {o['seconds']:g} s per phase in {o['rounds']} alternating round(s), {o['turns']} turns "
        f"per conversation, think {o['think']:g} s, visitors through {o['client']}"
    )
    for name in ("single", "concurrent"):
        p = report[name]
        yield (
            f"  {p['users']} visitor(s): {p['turns']} turns, p50 {p['p50_s'] or 0:.3f} s, p95 {p['p95_s'] or 0:.3f} s, "
            f"errors {p['errors']}, cross-talk {p['cross_talk']}, replays {p['replays']} "
            f"({p['replay_mismatches']} differed); spoken turns {p['spoken_turns']}: p50 "
            f"{p['spoken_p50_s'] or 0:.3f} s, p95 {p['spoken_p95_s'] or 0:.3f} s; typed: p50 "
            f"{p['typed_p50_s'] or 0:.3f} s, p95 {p['typed_p95_s'] or 0:.3f} s"
        )
        if p["overlapped_turns"]:
            yield (
                f"    {p['overlapped_turns']} turns ran while another did: p50 {p['overlapped_p50_s']:.3f} s, "
                f"against {p['alone_p50_s'] or 0:.3f} s for the others"
            )
        if p["stolen_turns"]:
            yield (
                f"    {p['stolen_turns']} turns ran while the hypervisor took CPU: p50 {p['stolen_p50_s']:.3f} s; "
                f"the others p50 {p['unstolen_p50_s'] or 0:.3f} s, p95 {p['unstolen_p95_s'] or 0:.3f} s"
            )
        if p["cpu_ms_per_turn"]:
            cpu = dict(p["cpu_ms_per_turn"])
            stolen = cpu.pop("stolen", 0.0)
            yield (
                "    CPU per turn: "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items())
                + (f"; taken by the hypervisor {stolen:.1f} ms" if stolen else "")
            )
        for example in p["error_examples"] + p["cross_talk_examples"]:
            yield f"    {example}"
    if report["p95_over_single_p50"] is not None:
        yield (
            f"  concurrent p95 / single p50 = {report['p95_over_single_p50']:.2f} (all turns), "
            f"{report['spoken_p95_over_single_p50'] or float('nan'):.2f} (spoken turns against spoken), "
            f"{report['typed_p95_over_single_p50'] or float('nan'):.2f} (typed against typed)"
        )
        low, high = report["p95_over_single_p50_90ci"]
        yield f"  its 90 % bootstrap interval (rounds, then their turns, redrawn): {low:.2f}-{high:.2f}"
        if len(report["rounds"]) > 1:
            rounds = ", ".join(
                f"{r['single_p50_s'] or 0:.3f}/{r['concurrent_p95_s'] or 0:.3f} "
                f"({(r['single_stolen_s'] or 0) + (r['concurrent_stolen_s'] or 0):.1f})"
                for r in report["rounds"]
            )
            yield (
                f"  by round, 1 visitor p50 / {report['concurrent']['users']} visitors p95 s "
                f"(CPU s the hypervisor took in the two slices): {rounds}"
            )
        stolen = report["single"]["stolen_turns"] + report["concurrent"]["stolen_turns"]
        if stolen and report["unstolen_p95_over_single_p50"] is not None:
            yield (
                f"  the same over the turns during which the hypervisor took no CPU: "
                f"{report['unstolen_p95_over_single_p50']:.2f}"
            )


def main(args) -> int:
    options = LoadOptions(args.users, args.seconds, args.think, args.turns, client=args.client, rounds=args.rounds)
    if bool(args.url) == bool(args.spawn):
        raise ValueError("give --url URL of a running app (loopback) or --spawn to start one")
    if args.app_args and not args.spawn:
        raise ValueError("--app-args is for the app that --spawn starts")
    server = None
    if args.spawn:
        server = spawn_app((*(("--tts", "none") if args.no_tts else ()), *shlex.split(args.app_args)))
        server.sample_memory()
    try:
        report = loadtest(server.url if server else args.url, options, server.cpu_s if server else None)
    finally:
        if server:
            server.stop()
    if server:
        report.update(startup_s=server.startup_s, server_peak_rss_mb=server.peak_rss_mb)
    failed = report["single"]["errors"] + report["concurrent"]["errors"] + report["concurrent"]["cross_talk"]
    if args.json:
        print(json.dumps(report))
    else:
        for line in format_report(report):
            print(line)
    return 1 if failed else 0
