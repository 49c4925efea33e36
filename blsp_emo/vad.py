"""Voice activity detection for hands-free turns: where a visitor's utterance ends, in a microphone stream.

Silero VAD scores each 32 ms frame of 16 kHz audio as speech or not; `step` turns those scores into
turns. An utterance starts once `min_speech_s` of speech is heard (`SpeechStarted`: the visitor is
talking, which is what barge-in waits for) and ends after a pause of `pause_s` (`Utterance`), or is
sent when it reaches `max_utterance_s`. Everything a stream can make this hold is bounded: one chunk
(`max_chunk_s`), the audio kept before speech (`pre_roll_s`) and one utterance.

The model is the `silero-vad` wheel's own ONNX file run by onnxruntime, not the TorchScript model
`load_silero_vad()` returns, for two reasons. The page's process never imports torch
(docs/architecture.md; `tests/test_workers.py` checks it), while onnxruntime is loaded there anyway
for the neural voice. And the TorchScript model keeps its recurrent state inside itself, so one model
shared by every visitor would mix their streams: the ONNX graph takes the state as an input and
returns the next one, so one read-only session (`load_vad`, once per process) serves every visitor
and each visitor's state lives in their own `VadState`. `tests/test_vad.py` checks that both give the
same scores.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

SAMPLE_RATE = 16_000  # Silero's rate
FRAME = 512  # samples per scored frame (32 ms)
CONTEXT = 64  # samples of the frame before that the model sees with each frame
MIN_RATE, MAX_RATE = 8_000, 192_000  # a microphone's rates; blsp_emo.audio.MAX_SAMPLE_RATE
SILERO_PACKAGE, SILERO_FILE = "silero_vad", "silero_vad.onnx"


@dataclass(frozen=True)
class VadOptions:
    """When a turn starts and ends; the defaults suit a person talking to the demo."""

    pause_s: float = 0.8  # silence after speech that ends the turn
    threshold: float = 0.5  # a frame at or above this speech probability is speech
    min_speech_s: float = 0.25  # less speech than this (a cough, a click) is no turn
    max_utterance_s: float = 20.0  # a longer turn is sent at this length (the model hears at most 30 s)
    pre_roll_s: float = 0.3  # audio kept from before the first speech frame: its onset
    keep_after_s: float = 0.2  # audio kept after the last speech frame: its fading end
    max_chunk_s: float = 2.0  # a longer stream chunk is cut to its last `max_chunk_s` (a client sends ~0.3 s)

    def __post_init__(self):
        ranges = {
            "pause_s": (0.2, 5.0),
            "threshold": (0.05, 0.95),
            "min_speech_s": (0.0, 2.0),
            "max_utterance_s": (1.0, 30.0),
            "pre_roll_s": (0.0, 2.0),
            "keep_after_s": (0.0, 2.0),
            "max_chunk_s": (0.1, 10.0),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"VAD {name} is {value!r}; give a number from {low:g} to {high:g}")
        if self.keep_after_s >= self.pause_s:
            raise ValueError(f"VAD keep_after_s {self.keep_after_s:g} must be below pause_s {self.pause_s:g}")


@dataclass(frozen=True)
class Carry:
    """The model's memory between frames: its recurrent state and the end of the last frame."""

    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))


class FrameScorer(Protocol):
    def score(self, frames: np.ndarray, carry: Carry) -> tuple[np.ndarray, Carry]:
        """Speech probabilities of `frames` ((n, FRAME) float32 at 16 kHz, in order) and the carry after them."""
        ...


class SileroVad:
    """Silero VAD's ONNX graph: stateless itself, so one instance serves every stream at once."""

    def __init__(self, path: str | Path | None = None):
        import onnxruntime

        path = Path(path) if path else silero_model_path()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # a frame is ~0.1 ms of work
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._rate = np.array(SAMPLE_RATE, np.int64)

    def score(self, frames: np.ndarray, carry: Carry) -> tuple[np.ndarray, Carry]:
        probabilities = np.empty(len(frames), np.float32)
        state, context = carry.state, carry.context
        for i, frame in enumerate(frames):
            x = np.concatenate([context, frame])[None, :].astype(np.float32, copy=False)
            out, state = self.session.run(None, {"input": x, "state": state, "sr": self._rate})
            probabilities[i], context = out[0, 0], x[0, -CONTEXT:]
        return probabilities, Carry(state, context.copy())


def silero_model_path() -> Path:
    """The ONNX model inside the `silero-vad` wheel; the error names the fix when it is not installed."""
    from importlib.util import find_spec

    spec = find_spec(SILERO_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / SILERO_FILE
        if path.is_file():
            return path
    raise RuntimeError("Silero VAD is not installed: `pip install silero-vad` (requirements.txt pins it)")


_LOADING = threading.Lock()
_VAD: list[SileroVad] = []


def load_vad() -> SileroVad:
    """The process's one Silero VAD, loaded by whichever thread asks first (about 10 ms)."""
    with _LOADING:
        if not _VAD:
            _VAD.append(SileroVad())
        return _VAD[0]


# --- turns --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechStarted:
    """The visitor has been speaking for `min_speech_s`: a reply still playing should stop."""

    at_s: float  # stream seconds at which the speech began


@dataclass(frozen=True)
class Utterance:
    """One turn: its audio at the stream's rate, from just before the speech to just after it."""

    samples: np.ndarray  # (T,) float32 at `rate`
    rate: int
    speech_end_s: float  # stream seconds at which the speech ended
    heard_s: float  # stream seconds received when the turn was found to be over
    cut: bool = False  # sent because it reached max_utterance_s, the speaker still talking

    @property
    def seconds(self) -> float:
        return self.samples.size / self.rate

    @property
    def waited_s(self) -> float:
        """Audio heard after the speech ended, before the turn was sent (the pause, and the chunk it ended in)."""
        return max(0.0, self.heard_s - self.speech_end_s)


@dataclass(frozen=True)
class VadState:
    """One stream's state; a new stream (or a new sample rate) starts from `VadState()`."""

    carry: Carry = field(default_factory=Carry)
    rate: int | None = None
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # 16 kHz, not yet scored
    audio: tuple[np.ndarray, ...] = ()  # the stream's latest chunks at `rate`: the pre-roll, or the turn so far
    audio_start_s: float = 0.0  # stream seconds at which `audio` begins
    heard_s: float = 0.0  # stream seconds received
    scored_s: float = 0.0  # stream seconds scored
    speech_start_s: float | None = None  # None: no speech going on
    last_speech_s: float = 0.0  # end of the latest speech frame
    speech_s: float = 0.0  # seconds of speech frames since speech_start_s
    started: bool = False  # SpeechStarted was sent for the speech going on


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """A microphone chunk ((T,) or (T, channels), int or float) as (T,) float32 in [-1, 1]."""
    samples = np.asarray(samples)
    if samples.ndim > 2 or not (np.issubdtype(samples.dtype, np.integer) or np.issubdtype(samples.dtype, np.floating)):
        raise ValueError(f"a microphone chunk of shape {samples.shape} and dtype {samples.dtype} is not audio")
    scale = float(np.iinfo(samples.dtype).max) if np.issubdtype(samples.dtype, np.integer) else 1.0
    samples = samples.astype(np.float32) / scale
    if samples.ndim == 2:  # (T, channels), Gradio's layout
        samples = samples.mean(axis=1)
    return np.clip(np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)


def to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """`samples` at `rate` resampled to 16 kHz (polyphase: cheap enough for every chunk of a stream)."""
    if rate == SAMPLE_RATE:
        return samples
    from math import gcd

    from scipy.signal import resample_poly  # librosa's dependency; its edge effects are far below a frame

    g = gcd(SAMPLE_RATE, rate)
    return resample_poly(samples, SAMPLE_RATE // g, rate // g).astype(np.float32)


def step(
    state: VadState, rate: int, chunk: np.ndarray, options: VadOptions, scorer: FrameScorer
) -> tuple[VadState, list[SpeechStarted | Utterance]]:
    """Feed one chunk of a stream ((T,) float32 at `rate`); the new state and what happened in it."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"microphone sample rate {rate} Hz; give {MIN_RATE} to {MAX_RATE} Hz")
    if state.rate not in (None, rate):  # a new microphone: a new stream
        state = VadState()
    chunk = chunk[-int(options.max_chunk_s * rate) :]
    heard_s = state.heard_s + chunk.size / rate
    state = replace(state, rate=rate, audio=(*state.audio, chunk), heard_s=heard_s)
    pending = np.concatenate([state.pending, to_16k(chunk, rate)])
    whole = pending.size // FRAME
    probabilities, carry = scorer.score(pending[: whole * FRAME].reshape(whole, FRAME), state.carry)
    state = replace(state, carry=carry, pending=pending[whole * FRAME :].copy())
    events: list[SpeechStarted | Utterance] = []
    for probability in probabilities:
        state = _frame(state, float(probability), options, events)
    if state.speech_start_s is None:
        state = _keep_pre_roll(state, options)
    return state, events


def _frame(state: VadState, probability: float, options: VadOptions, events: list) -> VadState:
    """One scored frame; Silero's own iterator keeps speech going down to 0.15 below the threshold."""
    start, end = state.scored_s, state.scored_s + FRAME / SAMPLE_RATE
    state = replace(state, scored_s=end)
    talking = state.speech_start_s is not None
    if probability >= (options.threshold - 0.15 if talking else options.threshold):
        if not talking:
            state = replace(state, speech_start_s=start, speech_s=0.0, started=False)
        state = replace(state, last_speech_s=end, speech_s=state.speech_s + FRAME / SAMPLE_RATE)
        if not state.started and state.speech_s >= options.min_speech_s:
            state = replace(state, started=True)
            events.append(SpeechStarted(state.speech_start_s))
        if end - state.speech_start_s >= options.max_utterance_s:
            return _end(state, options, events, cut=True)
        return state
    if talking and end - state.last_speech_s >= options.pause_s:
        return _end(state, options, events) if state.started else replace(state, speech_start_s=None)
    return state


def _end(state: VadState, options: VadOptions, events: list, cut: bool = False) -> VadState:
    """The turn is over: send its audio, keep what came after it as the next turn's pre-roll."""
    audio = np.concatenate(state.audio)
    first = max(0, int((state.speech_start_s - options.pre_roll_s - state.audio_start_s) * state.rate))
    last = int((state.last_speech_s + (0 if cut else options.keep_after_s) - state.audio_start_s) * state.rate)
    events.append(Utterance(audio[first:last].copy(), state.rate, state.last_speech_s, state.heard_s, cut))
    return _keep_pre_roll(replace(state, speech_start_s=None, speech_s=0.0, started=False), options)


def _keep_pre_roll(state: VadState, options: VadOptions) -> VadState:
    """Drop the oldest chunks while the rest still covers `pre_roll_s` (and the frames not yet scored)."""
    keep_from = min(state.heard_s - options.pre_roll_s, state.scored_s - options.pre_roll_s)
    audio, start = list(state.audio), state.audio_start_s
    while len(audio) > 1 and start + audio[0].size / state.rate <= keep_from:
        start += audio.pop(0).size / state.rate
    return replace(state, audio=tuple(audio), audio_start_s=start)
