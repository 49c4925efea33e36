"""Local microphone and speaker through sounddevice, imported lazily.

sounddevice raises OSError at import when the PortAudio library is missing and PortAudioError when
there is no device; both become one `MicrophoneError` line that says what to do instead.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from blsp_emo.audio import SAMPLE_RATE


class MicrophoneError(RuntimeError):
    """No usable microphone or speaker; the message is one user-facing line."""


def _sounddevice():
    try:
        import sounddevice
    except (OSError, ImportError) as e:
        raise MicrophoneError(
            "the PortAudio library is not installed (Debian: apt-get install libportaudio2); "
            "use --file CLIP.wav instead"
        ) from e
    return sounddevice


def check_input() -> None:
    """Raise MicrophoneError unless a default input device can record 16 kHz mono."""
    sd = _sounddevice()
    try:
        sd.check_input_settings(samplerate=SAMPLE_RATE, channels=1, dtype="float32")
    except Exception as e:  # PortAudioError for "no device", ValueError for unsupported settings
        raise MicrophoneError(f"no usable microphone ({e}); use --file CLIP.wav instead") from e


def record(stop: threading.Event, max_seconds: float) -> np.ndarray:
    """Record 16 kHz mono until `stop` is set or `max_seconds` pass: (T,) float32."""
    sd = _sounddevice()
    blocks: queue.Queue[np.ndarray] = queue.Queue()
    try:
        with sd.InputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="float32",
            callback=lambda data, frames, time, status: blocks.put(data.copy()),
        ):
            stop.wait(timeout=max_seconds)
    except Exception as e:
        raise MicrophoneError(f"recording failed ({e}); use --file CLIP.wav instead") from e
    chunks = [blocks.get() for _ in range(blocks.qsize())]
    return np.concatenate(chunks)[:, 0] if chunks else np.zeros(0, np.float32)


def play(rate: int, samples: np.ndarray) -> None:
    """Play audio and wait until it ends; MicrophoneError when there is no output device."""
    sd = _sounddevice()
    try:
        sd.play(samples, rate)
        sd.wait()
    except Exception as e:
        raise MicrophoneError(f"cannot play audio ({e})") from e
