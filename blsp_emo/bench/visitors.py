"""The simulated visitors of `loadtest`: how many, for how long and where (loopback only, bounded),
and what each one does: short conversations, every turn checked to be its own."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from blsp_emo.bench.app_process import ROOT, machine_stolen_s
from blsp_emo.bench.load_report import Phase
from blsp_emo.bench.visitor_lines import GradioClientLine, PageLine

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_USERS, MAX_SECONDS = 64, 600.0
CLIENTS = ("gradio_client", "page")


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


def check_loopback(url: str) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"loadtest only targets this machine; {url!r} is not a loopback address (use 127.0.0.1)")
    return url


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
