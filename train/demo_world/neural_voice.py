"""Emotional speech in the neural voice: Piper's joe-medium voice, with an emotion's prosody imposed.

    python -m train neural-voice --measure                 # what each emotion measures (the docs table)
    python -m train neural-voice --text "..." --emotion sad --out clip.wav

Each text is synthesized once, neutral, by Piper (`neutral_speech`, cached per text); an emotion is
then imposed on that one rendering with Praat PSOLA (`blsp_emo.prosody_shift`): its f0 level, its
f0 range around the median, its duration and its energy, drawn per utterance from the same table
as espeak-ng's corpus (`PROSODY` in `prosody.py`, mean ± jitter). So two clips of a text differ
only by the prosody asked for, and the words, the voice and its timbre say nothing of the emotion.

The table's percentages are read as espeak-ng reads them, so both voices move as far for one
setting: rate +100 % halves the duration and volume +100 % doubles the amplitude, as SSML says;
range is the factor on the f0 excursions in semitones; pitch is 0.11 semitone per percent, the
slope espeak-ng's pitch offsets measured (docs/demo_world.md: +30 % gave +3.4 st, −30 % −3.8 st).

Returns (22050, float32 samples), not normalised: each text's neutral rendering is scaled by one
constant, the voice's calibration to TARGET_RMS (as `voice_amplitude` calibrates every espeak voice),
and the emotion's volume then scales it. The recording chain (`acoustics.py`) adds gain, room,
noise and the file's sample rate afterwards.
"""

from __future__ import annotations

import argparse
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from blsp_emo import prosody_shift
from blsp_emo.emotion import EMOTIONS
from blsp_emo.prosody_shift import ProsodyShift
from train.demo_world.prosody import CALIBRATION_TEXT, MEASURE_TEXT, PROSODY, TARGET_RMS, Setting, sample_setting
from train.demo_world.voices import SynthesisError

SEMITONES_PER_PITCH_PERCENT = 0.11  # espeak-ng's measured slope (module docstring)
# Zero noise: Piper draws its variation inside the ONNX graph from a generator no seed reaches
# (onnxruntime.set_seed does not: checked), so only without it is a text's rendering the same in
# every run, and a seeded corpus the same files.
NOISE_SCALE, NOISE_W = 0.0, 0.0
MEASURE_SENTENCES = (
    MEASURE_TEXT,
    CALIBRATION_TEXT,
    "We will meet at the station after lunch and walk to the museum together.",
    "She moved the chairs into the garden before the evening news began.",
)


# --- the setting and what it imposes ------------------------------------------------------------


def sample(emotion: str, rng: random.Random, jitter: float = 1.0) -> Setting:
    """`emotion`'s table values moved by jitter (as espeak's corpus draws them), with the voice's
    calibration as `amplitude` (100 = unit gain), so a manifest row records what was applied."""
    return sample_setting(emotion, rng, calibration_amplitude(), jitter)


def shift_for(setting: Setting) -> ProsodyShift:
    """The PSOLA change and gain that `setting` asks of a neutral rendering."""
    return ProsodyShift(
        semitones=SEMITONES_PER_PITCH_PERCENT * setting.pitch,
        range_factor=max(0.0, 1 + setting.pitch_range / 100),
        duration_factor=1 / (1 + setting.rate / 100),
        gain=setting.amplitude / 100 * max(0.0, 1 + setting.volume / 100),
    )


# --- rendering ----------------------------------------------------------------------------------


@lru_cache(maxsize=64)  # a corpus renders one text in every emotion in a row; 64 clips are ~20 MB
def neutral_speech(text: str) -> tuple[int, np.ndarray]:
    """Piper's neutral rendering of `text` at unit gain (read-only: it is shared by every caller)."""
    from piper import SynthesisConfig

    from blsp_emo.piper_voice import load_voice, speak

    if not text.strip():
        raise ValueError("empty text: give the sentence to speak")
    config = SynthesisConfig(length_scale=1.0, noise_scale=NOISE_SCALE, noise_w_scale=NOISE_W, normalize_audio=False)
    rate, samples = speak(load_voice(), text, config)
    if samples.size < rate // 10:
        raise SynthesisError(f"Piper gave {samples.size} samples for {text!r}; check the text")
    samples.flags.writeable = False
    return rate, samples


def render_setting(text: str, setting: Setting) -> tuple[int, np.ndarray]:
    """`text` in the neural voice with `setting` imposed: (sample rate, (T,) float32), not clipped."""
    rate, neutral = neutral_speech(text)
    seed = zlib.crc32(f"{text}|{setting}".encode())  # the same clip for the same text and setting
    return rate, prosody_shift.apply(rate, neutral, shift_for(setting), clip=False, resynthesize=True, seed=seed)


def render(text: str, emotion: str, rng: random.Random, jitter: float = 1.0) -> tuple[int, np.ndarray]:
    """`text` spoken in `emotion`'s prosody, drawn from the table's mean ± `jitter` x its jitter."""
    return render_setting(text, sample(emotion, rng, jitter))


@cache
def calibration_amplitude() -> int:
    """The gain (in percent) that gives the voice's neutral speech TARGET_RMS, as espeak's voices get."""
    rate, samples = neutral_speech(CALIBRATION_TEXT)
    return int(round(100 * TARGET_RMS / prosody_shift.acoustics(rate, samples).rms))


# --- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmotionShift:
    """One emotion against neutral, averaged over sentences: what the table asks, and what is measured."""

    emotion: str
    asked_f0_st: float
    f0_st: float  # median f0, in semitones from neutral's
    asked_range_x: float
    range_st: float  # change of the 5-95 % f0 spread, in semitones
    asked_duration_x: float
    duration_x: float
    asked_rms_x: float
    rms_x: float


def measure(sentences: Sequence[str] = MEASURE_SENTENCES, emotions: Sequence[str] = EMOTIONS) -> list[EmotionShift]:
    """Each emotion at its table means (no jitter) against neutral, measured with Praat."""
    neutral = sample("neutral", random.Random(0), jitter=0.0)
    base = [prosody_shift.acoustics(*render_setting(text, neutral)) for text in sentences]
    return [_shift(emotion, sentences, base, neutral) for emotion in emotions]


def _shift(emotion: str, sentences: Sequence[str], base: list, neutral: Setting) -> EmotionShift:
    setting = sample(emotion, random.Random(0), jitter=0.0)
    got = [prosody_shift.acoustics(*render_setting(text, setting)) for text in sentences]
    asked = shift_for(setting)
    unit = shift_for(neutral).gain

    def mean(values) -> float:
        return float(np.mean(list(values)))

    return EmotionShift(
        emotion=emotion,
        asked_f0_st=round(asked.semitones, 2),
        f0_st=round(mean(prosody_shift.semitones_between(b.f0_hz, g.f0_hz) for b, g in zip(base, got)), 2),
        asked_range_x=round(asked.range_factor, 2),
        range_st=round(mean(g.f0_range_st - b.f0_range_st for b, g in zip(base, got)), 2),
        asked_duration_x=round(asked.duration_factor, 3),
        duration_x=round(mean(g.duration_s / b.duration_s for b, g in zip(base, got)), 3),
        asked_rms_x=round(asked.gain / unit, 2),
        rms_x=round(mean(g.rms / b.rms for b, g in zip(base, got)), 2),
    )


def table(shifts: Sequence[EmotionShift], sentences: int) -> str:
    """The docs table (Markdown): the setting, what it asks, what was measured."""
    lines = [
        f"| emotion | pitch % | range % | rate % | volume % | median f0 (asked) | f0 range | duration (asked) "
        f"| RMS (asked) |  ← mean of {sentences} sentences",
        "|---" * 9 + "|",
    ]
    for s in shifts:
        p = PROSODY[s.emotion]
        knobs = " | ".join(f"{k.mean:+g} ± {k.jitter:g}" for k in (p.pitch, p.pitch_range, p.rate, p.volume))
        lines.append(
            f"| {s.emotion} | {knobs} | {s.f0_st:+.1f} st ({s.asked_f0_st:+.1f}) | {s.range_st:+.1f} st "
            f"(×{s.asked_range_x:g}) | ×{s.duration_x:.2f} ({s.asked_duration_x:.2f}) | ×{s.rms_x:.2f} ({s.asked_rms_x:.2f}) |"
        )
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m train neural-voice`."""
    add = parser.add_argument
    add("--measure", action="store_true", help="print each emotion's measured shift from neutral (no jitter)")
    add("--sentences", type=int, default=len(MEASURE_SENTENCES), help="with --measure: how many sentences to average")
    add("--text", help="speak this text (with --emotion and --out)")
    add("--emotion", default="neutral", help=f"one of {', '.join(EMOTIONS)}")
    add("--seed", type=int, default=0, help="seeds the jitter")
    add("--jitter", type=float, default=1.0, help="scale of the per-utterance jitter (0: the table means)")
    add("--out", help="WAV file to write (PCM-16 at the voice's 22.05 kHz)")


def run(args: argparse.Namespace) -> int:
    _check_voice()
    if args.measure:
        if not 1 <= args.sentences <= len(MEASURE_SENTENCES):
            raise ValueError(f"--sentences {args.sentences}: choose 1 to {len(MEASURE_SENTENCES)}")
        print(table(measure(MEASURE_SENTENCES[: args.sentences]), args.sentences))
        return 0
    if not args.text or not args.out:
        raise ValueError("--text TEXT and --out FILE.wav are required (or pass --measure)")
    if args.jitter < 0:
        raise ValueError(f"--jitter must be >= 0, got {args.jitter}")
    setting = sample(args.emotion, random.Random(args.seed), args.jitter)
    rate, samples = render_setting(args.text, setting)
    _write_wav(Path(args.out), rate, samples)
    print(f"{args.out}: {samples.size / rate:.2f} s, {args.emotion}, prosody {setting}")
    return 0


def _check_voice() -> None:
    from blsp_emo.tts import piper_problem

    if problem := piper_problem():
        raise SynthesisError(f"the neural voice cannot run: {problem}")


def _write_wav(path: Path, rate: int, samples: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")


__all__ = [
    "EmotionShift",
    "calibration_amplitude",
    "measure",
    "neutral_speech",
    "render",
    "render_setting",
    "sample",
    "shift_for",
]
