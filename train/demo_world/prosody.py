"""The emotions' prosody table, and one clip rendered with espeak-ng and measured.

Each emotion is a set of SSML `<prosody pitch range rate volume>` offsets from the voice's own
baseline (`PROSODY`), jittered per utterance (`sample_setting`); `render` speaks a text with one
such setting, and `measure` reads back what a listener hears (`python -m train synth --measure`).
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from xml.sax.saxutils import escape

import numpy as np

from blsp_emo.audio import SAMPLE_RATE
from blsp_emo.emotion import EMOTIONS
from train.demo_world.voices import SynthesisError, Voice, espeak_binary, espeak_data_path


@dataclass(frozen=True)
class Knob:
    mean: float  # percent offset from the voice's baseline (SSML relative value)
    jitter: float  # half-width of the uniform per-utterance jitter, in the same percent


@dataclass(frozen=True)
class Prosody:
    """One emotion's tone as SSML `<prosody>` offsets (see the module table in `PROSODY`)."""

    pitch: Knob  # mean f0 (espeak's pitch scale: +50 % is about +4 semitones)
    pitch_range: Knob  # f0 excursion around the mean (espeak caps it at +100 %)
    rate: Knob  # speaking rate (+100 % doubles the words per minute)
    volume: Knob  # amplitude (+100 % doubles it, about +6 dB)


# Vocal-affect profiles after Juslin & Laukka (2003, Table 7) and Scherer (2003): anger raises
# intensity most, with fast rate and raised pitch; happiness raises pitch and widens its range
# with a faster rate; sadness lowers pitch, narrows range, slows and softens; surprise has the
# highest pitch and widest range. Jitter widths make neighbours overlap on every single cue.
PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(pitch=Knob(0, 10), pitch_range=Knob(0, 20), rate=Knob(0, 8), volume=Knob(0, 12)),
    "happy": Prosody(pitch=Knob(30, 12), pitch_range=Knob(45, 20), rate=Knob(18, 8), volume=Knob(15, 12)),
    "angry": Prosody(pitch=Knob(20, 12), pitch_range=Knob(15, 20), rate=Knob(25, 8), volume=Knob(70, 20)),
    "sad": Prosody(pitch=Knob(-30, 10), pitch_range=Knob(-55, 15), rate=Knob(-25, 8), volume=Knob(-35, 12)),
    "surprise": Prosody(pitch=Knob(55, 12), pitch_range=Knob(90, 10), rate=Knob(3, 8), volume=Knob(15, 12)),
}
# Sampled values are clipped to these. espeak-ng caps range at +100 % (measured); the other
# bounds stay clear of its 80 wpm floor (rate) and of f0 below what `measure` tracks (pitch).
LIMITS = {"pitch": (-60, 120), "pitch_range": (-100, 100), "rate": (-50, 100), "volume": (-80, 150)}
TARGET_RMS = 0.04  # every voice's neutral loudness, so volume means the same for every speaker
CALIBRATION_TEXT = "The letter from the office is on the kitchen table."


# --- prosody ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """The prosody applied to one clip: SSML percent offsets plus espeak's `-a` amplitude."""

    pitch: int
    pitch_range: int
    rate: int
    volume: int
    amplitude: int  # per-voice calibration (`voice_amplitude`), the same for every emotion


def sample_setting(emotion: str, rng: random.Random, amplitude: int, jitter: float = 1.0) -> Setting:
    """`emotion`'s table values, each moved by uniform jitter scaled by `jitter` (0: the means)."""
    if emotion not in PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; choose from {EMOTIONS}")
    values = {}
    for name, knob in vars(PROSODY[emotion]).items():
        low, high = LIMITS[name]
        value = knob.mean + jitter * rng.uniform(-knob.jitter, knob.jitter)
        values[name] = int(round(min(max(value, low), high)))
    return Setting(**values, amplitude=amplitude)


def voice_amplitude(espeak_voice: str) -> int:
    """espeak `-a` that gives `espeak_voice` the neutral loudness TARGET_RMS (variants differ ~2x)."""
    return _amplitude(espeak_voice, espeak_data_path())


@cache
def _amplitude(espeak_voice: str, data_path: str | None) -> int:
    neutral = Setting(0, 0, 0, 0, amplitude=100)
    rms = measure(render(CALIBRATION_TEXT, espeak_voice, neutral)).rms
    return int(round(min(max(100 * TARGET_RMS / rms, 10), 200)))  # -a is linear in amplitude


def render(text: str, espeak_voice: str, setting: Setting) -> np.ndarray:
    """Speak `text`: (T,) float32 at SAMPLE_RATE. `espeak_voice` is a `-v` argument (`Voice.espeak`)."""
    import librosa
    import soundfile as sf

    ssml = (
        f'<speak><prosody pitch="{setting.pitch:+d}%" range="{setting.pitch_range:+d}%" '
        f'rate="{setting.rate:+d}%" volume="{setting.volume:+d}%">{escape(text)}</prosody></speak>'
    )
    fd, tmp = tempfile.mkstemp(suffix=".wav", prefix="espeak-")
    os.close(fd)
    try:
        cmd = [espeak_binary(), "-m", "-v", espeak_voice, "-a", str(setting.amplitude), "-w", tmp, ssml]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SynthesisError(f"espeak-ng failed on {text!r} with voice {espeak_voice}: {done.stderr.strip()}")
        samples, rate = sf.read(tmp, dtype="float32")
    finally:
        os.unlink(tmp)
    samples = librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE) if rate != SAMPLE_RATE else samples
    return np.clip(samples, -1.0, 1.0).astype(np.float32)  # resampling can overshoot by a hair


# --- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acoustics:
    duration_s: float
    f0_hz: float  # median f0 over voiced frames
    f0_range_st: float  # 5th to 95th percentile of f0, in semitones
    rms: float  # root mean square over frames above 5 % of the loudest
    # Energy at 1-4 kHz over 0.1-1 kHz, in dB. A voice raised in effort (anger) brightens, which
    # no gain undoes; scaling the waveform, as espeak-ng's volume does, leaves it where it was.
    tilt_db: float = 0.0


def measure(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Acoustics:
    """What a listener hears of the prosody, from (T,) samples. Uses yin (ms) rather than pyin (s)."""
    import librosa
    import scipy.signal

    frame, hop = 640, 160  # 40 ms windows hold two periods of fmin (55 Hz); 10 ms hop
    f0 = librosa.yin(samples, fmin=55, fmax=500, sr=sample_rate, frame_length=frame, hop_length=hop)
    rms = librosa.feature.rms(y=samples, frame_length=frame, hop_length=hop)[0]
    zcr = librosa.feature.zero_crossing_rate(samples, frame_length=frame, hop_length=hop)[0]
    n = min(len(f0), len(rms))
    f0, rms, zcr = f0[:n], rms[:n], zcr[:n]
    voiced = (rms > 0.1 * rms.max()) & (zcr < 0.2)  # yin reports a pitch for every frame, even /s/
    f0 = scipy.signal.medfilt(f0, 5)[voiced]  # the median filter removes single-frame octave jumps
    semitones = 12 * np.log2(f0) if f0.size else np.zeros(1)
    active = rms > 0.05 * rms.max()
    return Acoustics(
        duration_s=round(samples.size / sample_rate, 3),
        f0_hz=round(float(np.median(f0)) if f0.size else 0.0, 1),
        f0_range_st=round(float(np.percentile(semitones, 95) - np.percentile(semitones, 5)), 2),
        rms=round(float(np.sqrt(np.mean(rms[active] ** 2))) if active.any() else 0.0, 4),
        tilt_db=round(spectral_tilt_db(samples, sample_rate), 2),
    )


def spectral_tilt_db(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Energy at 1-4 kHz over 0.1-1 kHz, in dB, of the whole clip (0.0 for silence or no samples)."""
    if samples.size == 0:
        return 0.0
    power = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / sample_rate)
    low, high = power[(freqs >= 100) & (freqs < 1000)].sum(), power[(freqs >= 1000) & (freqs < 4000)].sum()
    return float(10 * np.log10(high / low)) if low > 0 and high > 0 else 0.0


# --- measuring the table ------------------------------------------------------------------------

MEASURE_TEXT = "I got the letter from the office today and put it on the kitchen table."


def measure_table(voices: Sequence[Voice], text: str = MEASURE_TEXT) -> list[dict]:
    """Acoustics of `text` in each emotion (table means, no jitter) for each voice, with the change
    from that voice's neutral: duration and RMS as ratios, f0 and its range in semitones, the
    spectral tilt in dB."""
    rows = []
    for voice in voices:
        amplitude = voice_amplitude(voice.espeak)
        base = None
        for emotion in EMOTIONS:
            setting = sample_setting(emotion, random.Random(0), amplitude, jitter=0.0)
            got = measure(render(text, voice.espeak, setting))
            base = base or got
            rows.append(
                {
                    "voice": voice.spec,
                    "emotion": emotion,
                    **asdict(got),
                    "duration_x": round(got.duration_s / base.duration_s, 2),
                    "f0_st": round(12 * float(np.log2(got.f0_hz / base.f0_hz)), 1),
                    "range_st": round(got.f0_range_st - base.f0_range_st, 1),
                    "rms_x": round(got.rms / base.rms, 2),
                    "tilt_change_db": round(got.tilt_db - base.tilt_db, 2),
                }
            )
    return rows
