"""Speech out: the reply spoken in a voice style chosen from the emotion the user was heard in.

Three backends behind one interface (`SpeechSynthesizer.synthesize(text, style)`):

- `espeak`  the espeak-ng command line, one subprocess and one temporary file per request, so
            concurrent requests cannot mix; prosody through `-s/-p/-a` and SSML `<prosody range>`.
            The default on Linux (Debian: `apt-get install espeak-ng`).
- `pyttsx3` the platform's own voices (SAPI5, NSSpeechSynthesizer, eSpeak) for local use. Its
            engine is a process-wide singleton that is not thread-safe and drops property changes
            made while a previous utterance is in flight, so ONE worker thread owns it, takes
            requests from a queue, lets each setting settle and waits for the file.
- `none`    no speech (returns None).

The voice keeps one identity across turns; only the prosody follows the emotion. An empathetic
reply should suit the listener's state, not mirror it: comfort a sad speaker, calm an angry one.
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
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

MAX_CHARS = 2000  # longer replies are cut at a word boundary: minutes of speech help nobody


class SynthesizerUnavailableError(RuntimeError):
    """The backend cannot run on this machine; the message says what to install or choose instead."""


class SynthesisError(RuntimeError):
    """The backend ran but produced no audio."""


@dataclass(frozen=True)
class VoiceStyle:
    """Prosody for one reply, in espeak-ng's units (pyttsx3 maps them onto its properties)."""

    name: str
    rate: int  # words per minute; espeak-ng's default is 175
    pitch: int  # base pitch 0-99; 50 is the voice's own
    volume: int  # amplitude 0-200; 100 is normal, above ~130 clips
    pitch_range: str  # SSML prosody range: x-low, low, medium, high, x-high (intonation width)
    purpose: str  # what the style is for, shown next to the audio

    def describe(self) -> str:
        return (
            f"{self.name}: {self.purpose} ({self.rate} wpm, pitch {self.pitch}, volume {self.volume}%, "
            f"{self.pitch_range} range)"
        )


# The one table mapping the detected emotion to the reply's voice. The settings are espeak-ng presets
# whose duration, loudness and F0 were measured on one sentence; their directions follow the prosody
# literature (sad speech is slower, lower and softer; happy and surprised speech faster and higher).
NEUTRAL = VoiceStyle("neutral", 165, 50, 100, "medium", "plain and even")
STYLES: dict[str | None, VoiceStyle] = {
    None: NEUTRAL,  # a system that does not perceive emotion
    "neutral": NEUTRAL,
    "sad": VoiceStyle("gentle", 135, 40, 80, "low", "slower, lower and softer, to comfort"),
    "angry": VoiceStyle("calm", 145, 42, 90, "low", "unhurried and steady, to de-escalate"),
    "happy": VoiceStyle("bright", 185, 65, 120, "x-high", "quicker and higher, to share the joy"),
    "surprise": VoiceStyle("lively", 180, 75, 120, "x-high", "animated and high, to match the wonder"),
}


def style_for(emotion: str | None) -> VoiceStyle:
    """The voice style for a reply to a user heard in `emotion` (neutral for unknown labels)."""
    return STYLES.get(emotion, NEUTRAL)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


def clean_text(text: str) -> str:
    """What is worth speaking: no control characters, collapsed whitespace, at most MAX_CHARS."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0]
    return text


@runtime_checkable
class SpeechSynthesizer(Protocol):
    name: str

    def synthesize(self, text: str, style: VoiceStyle = NEUTRAL) -> tuple[int, np.ndarray] | None:
        """Speak `text`. Returns (sample_rate, (T,) float32 in [-1, 1]), or None when there is nothing to say."""
        ...


class NullSynthesizer:
    name = "none"

    def synthesize(self, text: str, style: VoiceStyle = NEUTRAL) -> None:
        return None


def _read_wav(path: Path) -> tuple[int, np.ndarray]:
    import soundfile as sf

    samples, rate = sf.read(str(path), dtype="float32")
    if samples.size == 0:
        raise SynthesisError("the speech engine wrote an empty file")
    return int(rate), samples.reshape(-1)


class EspeakSynthesizer:
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


class Pyttsx3Synthesizer:
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


SYNTHESIZERS = {"espeak": EspeakSynthesizer, "pyttsx3": Pyttsx3Synthesizer, "none": NullSynthesizer}
DEFAULT_SYNTHESIZER = "espeak" if sys.platform.startswith("linux") else "pyttsx3"


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
    "DEFAULT_SYNTHESIZER",
    "NEUTRAL",
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
    "style_for",
]
