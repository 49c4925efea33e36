"""The neural voice: Piper speaking with the joe-medium voice (US English, 22.05 kHz), styled.

A `VoiceStyle` reaches the voice in three places: its rate as Piper's `length_scale` (the model
lengthens phonemes itself, more naturally than any re-timing after the fact), its pitch level and
range as a Praat PSOLA change of the f0 contour, and its volume as a gain
(`blsp_emo.voice_style.piper_shift`). Each sentence is synthesized and styled on its own, so
`synthesize_sentences` yields the first sentence while the next is still being made.

The voice model (63 MB, ~0.5 s to load) loads once per process, on first use. One lock per voice
serialises its ONNX session: a reply takes ~0.1 s per sentence, and concurrent runs would only
fight over the same cores.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from blsp_emo import prosody_shift
from blsp_emo.tts import (
    NEUTRAL,
    SpeechSynthesizer,
    SynthesisError,
    SynthesizerUnavailableError,
    VoiceStyle,
    piper_problem,
    piper_voice_path,
    split_sentences,
)
from blsp_emo.voice_style import length_scale, piper_shift

_LOADING = threading.Lock()
_VOICES: dict[Path, tuple[object, threading.Lock]] = {}  # model path -> (PiperVoice, its session lock)


def load_voice(model: str | Path | None = None) -> tuple[object, threading.Lock]:
    """The Piper voice at `model` (default: the joe-medium wheel's) and the lock to hold while it runs;
    loaded once per process, whichever thread asks first."""
    path = Path(model) if model else _default_model()
    with _LOADING:
        if path not in _VOICES:
            from piper import PiperVoice

            if not path.is_file():
                raise SynthesizerUnavailableError(f"no Piper voice model at {path}: pass the path of an .onnx voice")
            _VOICES[path] = (PiperVoice.load(str(path)), threading.Lock())
        return _VOICES[path]


def _default_model() -> Path:
    path = piper_voice_path()
    if path is None:
        raise SynthesizerUnavailableError(f"the Piper voice is unavailable: {piper_problem()}")
    return path


def speak(voice_and_lock: tuple[object, threading.Lock], text: str, config) -> tuple[int, np.ndarray]:
    """One sentence (or more, joined) from Piper with `config` (a `piper.SynthesisConfig`), unstyled."""
    voice, lock = voice_and_lock
    with lock:  # held for this text only, never across a caller's yield
        chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=config)]
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return int(voice.config.sample_rate), samples.astype(np.float32, copy=False)


class PiperSynthesizer(SpeechSynthesizer):
    """Piper with the joe-medium voice; the style follows the emotion (module docstring)."""

    name = "piper"

    def __init__(self, model: str | Path | None = None, noise_scale: float | None = None, noise_w: float | None = None):
        """`noise_scale`/`noise_w`: Piper's variation of voice and timing (None: the voice's own,
        0.667 and 0.8 for joe). The variation is drawn inside the ONNX graph, unseeded: only 0 and 0
        make a text's audio the same every time."""
        if model is None and (problem := piper_problem()):
            raise SynthesizerUnavailableError(f"the Piper voice cannot run here: {problem}; or choose --tts espeak")
        self.model, self.noise_scale, self.noise_w = model, noise_scale, noise_w

    def synthesize(self, text: str, style: VoiceStyle = NEUTRAL) -> tuple[int, np.ndarray] | None:
        pieces = list(self.synthesize_sentences(text, style))
        if not pieces:
            return None
        return pieces[0][0], np.concatenate([samples for _, samples in pieces])

    def synthesize_sentences(self, text: str, style: VoiceStyle = NEUTRAL) -> Iterator[tuple[int, np.ndarray]]:
        from piper import SynthesisConfig

        config = SynthesisConfig(
            length_scale=length_scale(style),
            noise_scale=self.noise_scale,
            noise_w_scale=self.noise_w,
            normalize_audio=False,  # Piper would scale each sentence to full scale: loudness is the style's
        )
        shift = piper_shift(style)
        for sentence in split_sentences(text):
            rate, samples = speak(load_voice(self.model), sentence, config)
            if samples.size == 0:
                raise SynthesisError(f"Piper produced no audio for {sentence!r}")
            yield rate, prosody_shift.apply(rate, samples, shift)
