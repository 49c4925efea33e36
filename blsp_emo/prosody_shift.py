"""Prosody moved after synthesis: f0 level and range, duration and energy, with Praat's PSOLA.

`apply(rate, samples, shift)` re-times and re-pitches a waveform without touching its spectrum
envelope (pitch-synchronous overlap-add through a Praat Manipulation), so one neutral rendering
can be spoken in any emotion's prosody. `acoustics(rate, samples)` measures what changed, with the
same Praat pitch tracker, so a test or a table can check the shift that was asked for.

Praat comes from `praat-parselmouth`, imported on first use.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

# Pitch floor and ceiling of the Manipulation's analysis. The floor sits well under a low male
# voice's lowest f0 (the joe voice's 5th percentile is ~60 Hz) so PSOLA finds every period.
ANALYSIS_FLOOR_HZ, ANALYSIS_CEILING_HZ = 50.0, 400.0
# The measurement tracks down to 40 Hz: a voice lowered by several semitones must still be seen.
MEASURE_FLOOR_HZ, MEASURE_CEILING_HZ = 40.0, 500.0
_SEEDED = threading.Lock()  # Praat's random generator is one per process


@dataclass(frozen=True)
class ProsodyShift:
    """How to move a waveform's prosody; the defaults leave it as it is."""

    semitones: float = 0.0  # f0 level: every pitch point moved by this many semitones
    range_factor: float = 1.0  # f0 excursions around the median (in semitones) times this; 0 flattens
    duration_factor: float = 1.0  # new length / old length (PSOLA: pitch and spectrum stay)
    gain: float = 1.0  # amplitude factor (energy); no normalisation follows

    def __post_init__(self):
        if self.range_factor < 0 or self.duration_factor <= 0 or self.gain < 0:
            raise ValueError(
                f"{self}: range_factor and gain must be >= 0 and duration_factor > 0 "
                "(a range_factor of 0 flattens the contour; a duration_factor of 0.5 halves the length)"
            )

    @property
    def moves_pitch_or_time(self) -> bool:
        return self.semitones != 0 or self.range_factor != 1 or self.duration_factor != 1


def apply(
    rate: int,
    samples: np.ndarray,
    shift: ProsodyShift,
    clip: bool = True,
    resynthesize: bool = False,
    seed: int | None = None,
) -> np.ndarray:
    """`samples` (T,) with `shift` imposed, as float32.

    `clip`: cut what a gain pushed past [-1, 1] (a player's range); without it, a later stage (a
    recording chain's gain) decides. `resynthesize`: run PSOLA even when the shift moves neither
    pitch nor time, so every clip of a corpus carries the same processing (else only the neutral
    ones would be free of its traces, and a model could learn those for emotion). `seed`: the same
    output every time (Praat draws random periods for unvoiced stretches it lengthens).
    """
    moves = (shift.moves_pitch_or_time or resynthesize) and samples.size
    out = (
        (_psola(rate, samples, shift) if seed is None else _seeded_psola(rate, samples, shift, seed))
        if moves
        else samples
    )
    out = np.asarray(out, dtype=np.float32) * np.float32(shift.gain * _level_kept(samples, out))
    return np.clip(out, -1.0, 1.0) if clip else out


def _level_kept(before: np.ndarray, after: np.ndarray) -> float:
    # PSOLA adds or drops pitch pulses: 3 semitones down loses ~10 % of the RMS, 6 up adds ~20 %.
    # Undo that, so the gain alone sets the energy (a stretch leaves the mean power as it was).
    if after is before:
        return 1.0
    power = float(np.mean(np.square(after, dtype=np.float64)))
    return float(np.sqrt(np.mean(np.square(before, dtype=np.float64)) / power)) if power > 0 else 1.0


def _seeded_psola(rate: int, samples: np.ndarray, shift: ProsodyShift, seed: int) -> np.ndarray:
    from parselmouth.praat import run

    with _SEEDED:
        run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
        try:
            return _psola(rate, samples, shift)
        finally:  # other callers get unpredictable draws again
            run("random_initializeSafelyAndUnpredictably ()")


def _psola(rate: int, samples: np.ndarray, shift: ProsodyShift) -> np.ndarray:
    import parselmouth
    from parselmouth.praat import call

    sound = parselmouth.Sound(samples.astype(np.float64), sampling_frequency=rate)
    manipulation = call(sound, "To Manipulation", 0.01, ANALYSIS_FLOOR_HZ, ANALYSIS_CEILING_HZ)
    if shift.semitones != 0 or shift.range_factor != 1:
        tier = call(manipulation, "Extract pitch tier")
        median = _tier_median(tier)
        if median is not None:  # an unvoiced clip (a whisper, a hiss) has no pitch to move
            level = 2 ** (shift.semitones / 12)
            # f' = median * (f / median)^k * level: excursions scale in semitones, around the median
            call(tier, "Formula", f"{median!r} * (self / {median!r}) ^ {shift.range_factor!r} * {level!r}")
            call([tier, manipulation], "Replace pitch tier")
    if shift.duration_factor != 1:
        tier = call("Create DurationTier", "duration", sound.xmin, sound.xmax)
        call(tier, "Add point", sound.xmin, shift.duration_factor)
        call([manipulation, tier], "Replace duration tier")
    return call(manipulation, "Get resynthesis (overlap-add)").values[0]


def _tier_median(tier) -> float | None:
    from parselmouth.praat import call

    count = int(call(tier, "Get number of points"))
    if count == 0:
        return None
    return float(np.median([call(tier, "Get value at index", i) for i in range(1, count + 1)]))


@dataclass(frozen=True)
class Acoustics:
    """What a listener hears of the prosody of one clip."""

    duration_s: float
    f0_hz: float  # median f0 over voiced frames (0 when none)
    f0_range_st: float  # 5th to 95th percentile of f0, in semitones
    rms: float  # root mean square over 10 ms frames above 5 % of the loudest frame


def acoustics(rate: int, samples: np.ndarray) -> Acoustics:
    """Measure `samples` (T,) with Praat's autocorrelation pitch tracker."""
    import parselmouth

    sound = parselmouth.Sound(samples.astype(np.float64), sampling_frequency=rate)
    f0 = sound.to_pitch(0.01, MEASURE_FLOOR_HZ, MEASURE_CEILING_HZ).selected_array["frequency"]
    f0 = f0[f0 > 0]
    semitones = 12 * np.log2(f0) if f0.size else np.zeros(1)
    hop = max(1, rate // 100)
    frames = samples[: samples.size // hop * hop].reshape(-1, hop).astype(np.float64)
    energy = np.sqrt(np.mean(frames**2, axis=1)) if frames.size else np.zeros(1)
    active = energy > 0.05 * energy.max()
    return Acoustics(
        duration_s=samples.size / rate,
        f0_hz=float(np.median(f0)) if f0.size else 0.0,
        f0_range_st=float(np.percentile(semitones, 95) - np.percentile(semitones, 5)),
        rms=float(np.sqrt(np.mean(energy[active] ** 2))) if active.any() else 0.0,
    )


def semitones_between(before: float, after: float) -> float:
    """The interval from f0 `before` to `after` in semitones (0 when either is unvoiced)."""
    return 12 * float(np.log2(after / before)) if before > 0 and after > 0 else 0.0
