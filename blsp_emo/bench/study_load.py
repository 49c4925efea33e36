"""`study loadtest`: N simulated raters take the app's study at once through its JSON API.

Each rater is a thread with its own `gradio_client.Client`: consent, then every trial of its plan
(fetch, wait as long as the clips last, report them played, rate at random, submit), submitting
its first trial twice as a double click would. A request that fails because the server went away
is retried (with a new client) until the deadline, so the test also shows what a restart loses.
Loopback addresses only.
"""

from __future__ import annotations

import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# One TLS context for every request: httpx would otherwise load the CA bundle again for each one
# (0.1 s of CPU), which on a small machine costs more than the app's own work. Loopback is plain http.
_TLS = ssl.create_default_context()
MAX_RATERS = 500


@dataclass
class Tally:
    """What the simulated raters saw; shared by their threads under a lock."""

    submitted: int = 0  # distinct trials sent
    acknowledged: dict[str, str] = field(default_factory=dict)  # key -> stored | duplicate (first answer)
    duplicate_answers: int = 0  # answers that said 'duplicate' (double clicks, retries after a lost answer)
    finished: int = 0  # raters who completed every trial
    retries: Counter = field(default_factory=Counter)  # why requests were retried
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def check_url(url: str) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"--url {url}: the load test only targets this machine (127.0.0.1, localhost, ::1)")
    return url


class _Rater:
    def __init__(self, url: str, deadline: float, tally: Tally, rng: random.Random, on_ack: Callable | None):
        self.url, self.deadline, self.tally, self.rng, self.on_ack = url, deadline, tally, rng, on_ack
        self.client = None

    def call(self, api_name: str, *args):
        """One API call, retried with a fresh client while the server is unreachable, until the deadline."""
        import httpx
        from gradio_client.exceptions import AppError
        from gradio_client.utils import QueueError

        delay = 0.2
        while True:
            try:
                if self.client is None:
                    self.client = _client(self.url)
                return self.client.predict(*args, api_name=api_name)
            except (OSError, ValueError, QueueError, CancelledError, httpx.TransportError, httpx.HTTPStatusError) as e:
                # refused, reset, cancelled or 'could not fetch config' while the server restarts, or 'queue full'
                # (the app's busy signal, as a person would press again); not an app's answer
                if isinstance(e, AppError) or time.monotonic() + delay > self.deadline:
                    raise
                with self.tally.lock:
                    self.tally.retries[type(e).__name__] += 1
                self.client = None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def run(self) -> None:
        begin = self.call("/study_begin", True, False)
        for trial in range(begin["trials"]):
            view = self.call("/study_trial", begin["rater_id"], trial)
            time.sleep(view.get("listen_seconds", 0))  # "listen" to the clips: the server refuses a sooner 'played'
            self.call("/study_played", begin["rater_id"], trial, view["key"])
            prefer = self.rng.choice(["A", "B", "A", "B", "tie", "both-bad"])
            scores = [self.rng.randint(0, 10) for _ in range(4)]
            args = (begin["rater_id"], trial, view["key"], view["shown_at"], *scores, prefer, "simulated rater")
            with self.tally.lock:
                self.tally.submitted += 1
            for _ in range(2 if trial == 0 else 1):  # the first trial is double-clicked
                answer = self.call("/study_submit", *args)
                with self.tally.lock:
                    self.tally.acknowledged.setdefault(view["key"], answer["status"])
                    self.tally.duplicate_answers += answer["status"] == "duplicate"
                if self.on_ack:
                    self.on_ack(view["key"])
        with self.tally.lock:
            self.tally.finished += 1


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, ssl_verify=_TLS, httpx_kwargs={"timeout": 60})


def run_load(
    url: str,
    raters: int,
    token: str | None = None,
    timeout_s: float = 300,
    seed: int = 0,
    on_ack: Callable[[str], None] | None = None,
) -> dict:
    """Drive `raters` simulated raters at once; returns the summary `study loadtest` prints."""
    check_url(url)
    if not 1 <= raters <= MAX_RATERS:
        raise ValueError(f"--raters {raters}: choose 1–{MAX_RATERS}")
    start = time.monotonic()
    deadline, tally = start + timeout_s, Tally()
    workers = [_Rater(url, deadline, tally, random.Random(seed * 100_003 + i), on_ack) for i in range(raters)]

    def run(worker: _Rater) -> None:
        try:
            worker.run()
        except Exception as e:  # noqa: BLE001 - reported, never raised: the other raters go on
            with tally.lock:
                tally.errors.append(f"{type(e).__name__}: {e}"[:300])

    with ThreadPoolExecutor(max_workers=raters) as pool:
        list(pool.map(run, workers))
    result = {
        "raters": raters,
        "finished": tally.finished,
        "submitted": tally.submitted,
        "acknowledged": len(tally.acknowledged),
        "duplicates": tally.duplicate_answers,
        "retries": dict(tally.retries),
        "errors": tally.errors[:10],
        "error_count": len(tally.errors),
        "seconds": round(time.monotonic() - start, 2),
    }
    result.update(
        audit(url, token, tally)
        if token
        else {"stored": None, "note": "pass --token (or set BLSP_EMO_ADMIN_TOKEN) to check the database"}
    )
    return result


def audit(url: str, token: str, tally: Tally) -> dict:
    """Compare what the raters saw acknowledged with the rows in the server's database."""
    answer = _client(url).predict(token, api_name="/study_audit")
    rows = Counter(answer["keys"])
    acked = set(tally.acknowledged)
    return {
        "stored": sum(1 for k in acked if rows.get(k) == 1),
        "lost": sorted(k for k in acked if k not in rows),
        "stored_more_than_once": sorted(k for k, n in rows.items() if n > 1),
        "rows_in_db": sum(rows.values()),
        "assignment": answer["assignment"],
    }
