"""Audio in: decode any file libsndfile (or librosa's fallback) reads, mono, 16 kHz, validated.

Every problem raises a subclass of `AudioError` whose message is one line that names the input and
says what to do; the CLI and the app show that line, never a traceback.
"""

from __future__ import annotations

import io
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
# Header bounds, checked before a sample is decoded. A 165 kB FLAC of 8 channels at 655,350 Hz lasting
# 29 s passes the duration check and would decode to 608 MB of float32 (a decompression bomb).
# 192 kHz is the highest rate of studio interfaces and hi-res files (no microphone records above it),
# and 8 channels is 7.1 surround, the widest layout an ordinary file carries. Together with the
# duration limit they bound the samples a clip can have; decoding reads `BLOCK_FRAMES` frames at a
# time and mixes them to mono as it goes, so what sits in memory is at most one mono clip
# (30 s x 192 kHz x 4 B = 23 MB) plus one block (64 k frames x 8 channels x 4 B = 2 MB).
MAX_SAMPLE_RATE = 192_000
MAX_CHANNELS = 8
BLOCK_FRAMES = 2**16


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


class AudioFormatError(AudioError):
    """A sample rate or channel count beyond what any microphone or speech clip has (refused from the header)."""


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
        samples, rate = _decode_bytes(source, max_seconds, name)
    elif isinstance(source, tuple):
        rate, samples = source
        name = name or "recorded audio"
        samples = np.asarray(samples)
        _check_format(name, int(rate), samples.shape[1] if samples.ndim == 2 else 1)
        samples = _to_float(samples)
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
        f = sf.SoundFile(str(path))
    except Exception:  # libsndfile cannot read it: try the fallback decoders before giving up
        size = path.stat().st_size
        if size > MAX_OTHER_FORMAT_BYTES:  # bounds what the fallback decoders are given at all
            raise NotAudioError(
                f"{name}: {size / 2**20:.0f} MB in a format libsndfile cannot read is not a clip of at most "
                f"{max_seconds:g} s; use a WAV, FLAC, OGG or MP3 clip"
            ) from None
        return _decode_other(path, max_seconds, name)
    with f:
        return _read_mono(f, max_seconds, name, "the audio data is corrupt or truncated")


def _decode_bytes(data: bytes, max_seconds: float, name: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not data:
        raise EmptyAudioError(f"{name}: no audio data (0 bytes)")
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as e:
        raise NotAudioError(f"{name}: not a readable audio file ({e})") from e
    with f:
        return _read_mono(f, max_seconds, name, "not a readable audio file")


def _check_format(name: str, rate: int, channels: int) -> None:
    """Refuse, from the header, rates and channel counts no speech clip has (see MAX_SAMPLE_RATE)."""
    if not 0 < rate <= MAX_SAMPLE_RATE:
        raise AudioFormatError(
            f"{name}: a sample rate of {rate:,} Hz is outside the limit of {MAX_SAMPLE_RATE:,} Hz; "
            f"resample the clip (16 kHz is enough)"
        )
    if not 0 < channels <= MAX_CHANNELS:
        raise AudioFormatError(
            f"{name}: {channels} channels is more than the limit of {MAX_CHANNELS}; mix the clip down to mono"
        )


def _read_mono(f, max_seconds: float, name: str, corrupt: str) -> tuple[np.ndarray, int]:
    """An open `soundfile.SoundFile` as mono float32, checked from its header before anything is decoded,
    then read a block at a time: its channels are never all in memory at once."""
    rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
    _check_format(name, rate, channels)
    # Refuse long files before reading them, so a 2-hour upload costs no memory.
    if frames > max_seconds * rate:
        raise _too_long(name, frames / rate, max_seconds)
    mono = np.empty(frames, np.float32)
    block = np.empty((min(BLOCK_FRAMES, max(frames, 1)), channels), np.float32)
    done = 0
    try:
        while done < frames:
            n = len(f.read(out=block[: frames - done]))
            if n == 0:
                break
            np.mean(block[:n], axis=1, out=mono[done : done + n])
            done += n
    except Exception as e:
        raise NotAudioError(f"{name}: {corrupt} ({e})") from e
    return mono[:done], rate


def _decode_other(path: Path, max_seconds: float, name: str) -> tuple[np.ndarray, int]:
    """Formats libsndfile cannot read (AAC, M4A, WebM...), through audioread (ffmpeg), as librosa's
    fallback decodes them, but checked from the stream's header and mixed to mono a buffer at a time."""
    import audioread

    unreadable = f"{name}: not a readable audio file; use WAV, FLAC, OGG or MP3"
    try:
        f = audioread.audio_open(str(path))
    except Exception as e:
        raise NotAudioError(f"{unreadable} ({type(e).__name__})") from e
    with f:
        rate, channels, duration = int(f.samplerate), int(f.channels), float(f.duration or 0.0)
        _check_format(name, rate, channels)
        if duration > max_seconds + 1.0:  # the header's duration is an estimate; the decoded length decides
            raise _too_long(name, duration, max_seconds)
        limit = int((max_seconds + 1.0) * rate)  # a header that lies about the duration stops here
        parts, frames, rest = [], 0, b""
        try:
            for buffer in f:  # 16-bit interleaved PCM; a buffer may end inside a frame
                data = rest + bytes(buffer)
                whole = len(data) - len(data) % (2 * channels)
                rest = data[whole:]
                block = np.frombuffer(data[:whole], "<i2").reshape(-1, channels)
                parts.append(block.mean(axis=1, dtype=np.float32) / np.float32(32768.0))
                frames += len(block)
                if frames > limit:
                    raise _too_long(name, max(duration, frames / rate), max_seconds)
        except AudioError:
            raise
        except Exception as e:
            raise NotAudioError(f"{unreadable} ({type(e).__name__})") from e
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), rate


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
