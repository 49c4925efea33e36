"""Audio in: decode any file libsndfile (or librosa's fallback) reads, mono, 16 kHz, validated.

Every problem raises a subclass of `AudioError` whose message is one line that names the input and
says what to do; the CLI and the app show that line, never a traceback.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the server of a worker pool decodes audio without importing torch
    import torch

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
MAX_SECONDS = 30.0  # Whisper's window; the released demo cut longer audio silently, we refuse it
MIN_SECONDS = 0.1
SILENCE_PEAK = 1e-4  # -80 dBFS: quieter than any real microphone's noise floor
# 30 s of MP3 or AAC at the highest bitrates is under 2 MB; this bounds what the fallback decoders read.
MAX_OTHER_FORMAT_BYTES = 32 * 2**20


class AudioError(ValueError):
    """Base class of every input-audio problem; its message is user-facing."""


class EmptyAudioError(AudioError):
    pass


class SilentAudioError(AudioError):
    pass


class AudioTooLongError(AudioError):
    pass


class InvalidSamplesError(AudioError):
    pass


class NotAudioError(AudioError):
    pass


AudioSource = str | Path | bytes | np.ndarray | tuple


def load_audio(source: AudioSource, max_seconds: float = MAX_SECONDS, name: str | None = None) -> np.ndarray:
    """Decode and validate audio as float32 mono at 16 kHz.

    Args:
        source: a file path, the file's bytes, a 16 kHz waveform, or `(sample_rate, samples)`
            as Gradio's numpy audio gives it (int16 or float; (T,) or (T, channels)).
        max_seconds: refuse longer audio with `AudioTooLongError` instead of cutting it.
        name: how to call the input in messages (defaults to the path).
    Returns:
        (T,) float32 in [-1, 1] at `SAMPLE_RATE`.
    """
    if isinstance(source, (str, Path)):
        name = name or str(source)
        samples, rate = _decode_file(Path(source), max_seconds, name)
    elif isinstance(source, bytes):
        name = name or "uploaded audio"
        samples, rate = _decode_bytes(source, name)
    elif isinstance(source, tuple):
        rate, samples = source
        name = name or "recorded audio"
        samples = _to_float(np.asarray(samples))
    elif isinstance(source, np.ndarray):
        name = name or "waveform"
        samples, rate = _to_float(source), SAMPLE_RATE
    else:
        raise NotAudioError(f"{type(source).__name__} is not audio: pass a file path, bytes or samples")
    return _validate(_resample(_mono(samples), int(rate)), max_seconds, name)


def _decode_file(path: Path, max_seconds: float, name: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not path.is_file():
        raise NotAudioError(f"{name}: no such file")
    if path.stat().st_size == 0:
        raise EmptyAudioError(f"{name}: the file is empty (0 bytes); record or choose a clip")
    try:
        info = sf.info(str(path))
    except Exception:  # libsndfile cannot read it: try librosa's decoders before giving up
        size = path.stat().st_size
        if size > MAX_OTHER_FORMAT_BYTES:  # librosa's fallback reads the whole file into memory first
            raise NotAudioError(
                f"{name}: {size / 2**20:.0f} MB in a format libsndfile cannot read is not a clip of at most "
                f"{max_seconds:g} s; use a WAV, FLAC, OGG or MP3 clip"
            ) from None
        return _decode_with_librosa(path, name)
    # Refuse long files before reading them, so a 2-hour upload costs no memory.
    if info.frames / info.samplerate > max_seconds:
        raise _too_long(name, info.frames / info.samplerate, max_seconds)
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise NotAudioError(f"{name}: the audio data is corrupt or truncated ({e})") from e
    return samples, rate


def _decode_bytes(data: bytes, name: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not data:
        raise EmptyAudioError(f"{name}: no audio data (0 bytes)")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        raise NotAudioError(f"{name}: not a readable audio file ({e})") from e
    return samples, rate


def _decode_with_librosa(path: Path, name: str) -> tuple[np.ndarray, int]:
    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns before its audioread fallback
            samples, rate = librosa.load(str(path), sr=None, mono=False)
    except Exception as e:
        raise NotAudioError(f"{name}: not a readable audio file; use WAV, FLAC, OGG or MP3 ({type(e).__name__})") from e
    return np.atleast_2d(samples).T, rate


def _to_float(samples: np.ndarray) -> np.ndarray:
    if samples.size == 0:
        return samples.astype(np.float32)
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / float(np.iinfo(samples.dtype).max)
    if not np.issubdtype(samples.dtype, np.floating):
        raise NotAudioError(f"samples of dtype {samples.dtype} are not audio")
    return samples.astype(np.float32)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Samples as 16-bit PCM, what WAV files and Gradio's audio players take: floats are clipped to
    [-1, 1] and scaled, integers are cast."""
    if samples.dtype.kind == "f":
        return (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    return samples.astype(np.int16)


def _mono(samples: np.ndarray) -> np.ndarray:
    # (T,) stays; (T, C) is averaged over channels (soundfile's layout and Gradio's).
    return samples.mean(axis=1) if samples.ndim == 2 else samples.reshape(-1)


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE or samples.size == 0 or not np.isfinite(samples).all():
        return samples
    import librosa

    return librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE).astype(np.float32)


def _too_long(name: str, seconds: float, max_seconds: float) -> AudioTooLongError:
    return AudioTooLongError(
        f"{name}: {seconds:.1f} s is longer than the model's {max_seconds:g} s window; "
        "trim it or split it into shorter clips"
    )


def _validate(samples: np.ndarray, max_seconds: float, name: str) -> np.ndarray:
    seconds = samples.size / SAMPLE_RATE
    if samples.size == 0:
        raise EmptyAudioError(f"{name}: the audio has no samples; record or choose a clip")
    if not np.isfinite(samples).all():
        raise InvalidSamplesError(f"{name}: the audio contains NaN or infinite samples")
    if seconds < MIN_SECONDS:
        raise EmptyAudioError(f"{name}: {seconds:.2f} s is too short; record at least {MIN_SECONDS:g} s")
    if seconds > max_seconds:
        raise _too_long(name, seconds, max_seconds)
    if np.abs(samples).max() < SILENCE_PEAK:
        raise SilentAudioError(f"{name}: the audio is silent; check the microphone and speak louder")
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


@lru_cache(maxsize=32)
def _feature_extractor(n_mels: int, n_frames: int):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=n_mels,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=n_frames // FRAMES_PER_SECOND,
    )


def log_mel(
    waveforms: list[np.ndarray], n_mels: int, n_frames: int, clip_length: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper log-mel features, padded to the encoder window.

    Args:
        clip_length: compute only the frames the longest clip needs, rounded up to whole seconds,
            for encoders in clip-length mode (which never read past a clip's end). Each valid frame
            equals its value in the full window: padding reaches at least n_fft / 2 samples past it.
    Returns:
        features (B, n_mels, n_frames) float32 (fewer frames with `clip_length`) and the valid
        frame count of each clip (B,).
    """
    if clip_length and waveforms:
        longest = max(-(-len(w) // HOP_LENGTH) for w in waveforms)  # the extractor's count: one per started hop
        seconds = -(-(longest + 2) // FRAMES_PER_SECOND)
        n_frames = min(n_frames, seconds * FRAMES_PER_SECOND)
    out = _feature_extractor(n_mels, n_frames)(
        waveforms,
        sampling_rate=SAMPLE_RATE,
        padding="max_length",
        max_length=n_frames * HOP_LENGTH,
        truncation=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return out["input_features"], out["attention_mask"].sum(-1)
