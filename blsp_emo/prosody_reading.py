"""The prosody of one clip, measured with Praat, against the neutral clips of the training voices.

Four readings, each something a listener hears of emotion:
- median pitch (Hz) and pitch range (5th to 95th percentile of f0, semitones): `prosody_shift.acoustics`;
- loudness: the RMS of the clip's active 10 ms frames (also `acoustics`), in dB re full scale;
- speaking rate: syllable nuclei per second of sounding time (`speaking_rate`).

Why syllable nuclei (de Jong & Wempe 2009, "Praat script to detect syllable nuclei"): a nucleus
is a peak of intensity that stands at least 2 dB above the dip before it, lies within 25 dB of
the clip's loudest stretch, and is voiced. It needs no transcript and no language model, so it
works on any voice, any accent and any words, and it counts syllables rather than voiced
stretches, which a fast speaker runs together. Dividing by sounding time (silences of 0.3 s or
more left out) keeps the leading and trailing silence, and a pause before a hands-free turn ends,
out of the rate.

The neutral reference is the spread of each reading over the training voices' neutral clips:
    python -m blsp_emo evidence-reference --manifest TRAIN_MANIFEST.jsonl --out neutral_reference.json
(the clips whose `emotion` is neutral). A reading is placed by its percentile among them and its
difference from their median.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from blsp_emo.prosody_shift import MEASURE_CEILING_HZ, MEASURE_FLOOR_HZ, acoustics

REFERENCE_FILE = "neutral_reference.json"
SILENCE_DB = 25.0  # below the loudest stretch by this much is silence (de Jong & Wempe's default)
MIN_DIP_DB = 2.0  # between two syllables intensity dips at least this much (their default)
MIN_PAUSE_S = 0.3  # a silence shorter than this is a stop closure, not a pause
MEASURES = ("median_pitch_hz", "pitch_range_st", "loudness_db", "speaking_rate")
QUANTILES = tuple(range(0, 101, 5))  # the reference keeps every 5th percentile
# Outside the 10th..90th percentile of the neutral clips a reading counts as lower or higher.
TYPICAL = (10.0, 90.0)


@dataclass(frozen=True)
class ProsodyReading:
    """What was measured in one clip; pitch fields are None when the clip has no voiced frame."""

    duration_s: float
    median_pitch_hz: float | None
    pitch_range_st: float | None
    loudness_db: float  # dB re full scale (RMS of active frames); -inf for silence
    speaking_rate: float  # syllable nuclei per second of sounding time
    syllables: int
    sounding_s: float


@dataclass(frozen=True)
class Spread:
    """One reading over the neutral reference clips: its value at every 5th percentile."""

    quantiles: tuple[float, ...]  # at QUANTILES
    n: int

    @property
    def median(self) -> float:
        return self.quantiles[QUANTILES.index(50)]

    def percentile(self, value: float) -> float:
        """Where `value` falls among the reference clips, 0..100 (interpolated)."""
        q = np.asarray(self.quantiles)
        below, upto = int(np.searchsorted(q, value, "left")), int(np.searchsorted(q, value, "right"))
        if below != upto:  # equal to a run of stored quantiles (many clips alike): the middle of the run
            return (QUANTILES[below] + QUANTILES[upto - 1]) / 2
        # Between two stored quantiles, linearly; below the lowest clip 0, above the highest 100.
        return float(np.interp(value, q, QUANTILES))


@dataclass(frozen=True)
class NeutralReference:
    """The spread of each reading over the training voices' neutral clips."""

    spreads: dict[str, Spread]
    source: str = ""  # the manifest it was measured on
    command: str = ""


@dataclass(frozen=True)
class Comparison:
    """One reading against the neutral reference."""

    measure: str  # one of MEASURES
    value: float
    reference_median: float
    difference: float  # in `unit`: semitones for pitch, st for range, dB for loudness, % for rate
    unit: str
    percentile: float  # among the neutral reference clips
    direction: str  # "lower", "typical" or "higher" (outside TYPICAL)


# --- measuring -----------------------------------------------------------------------------------


def read_prosody(rate: int, samples: np.ndarray) -> ProsodyReading:
    """Measure `samples` (T,) at `rate` Hz: pitch and loudness by `acoustics`, the rate by `speaking_rate`."""
    samples = np.asarray(samples, dtype=np.float32)
    heard = acoustics(rate, samples)
    voiced = heard.f0_hz > 0
    syllables, sounding = speaking_rate(rate, samples)
    return ProsodyReading(
        duration_s=heard.duration_s,
        median_pitch_hz=heard.f0_hz if voiced else None,
        pitch_range_st=heard.f0_range_st if voiced else None,
        loudness_db=20 * math.log10(heard.rms) if heard.rms > 0 else -math.inf,
        speaking_rate=syllables / sounding if sounding > 0 else 0.0,
        syllables=syllables,
        sounding_s=sounding,
    )


def speaking_rate(rate: int, samples: np.ndarray) -> tuple[int, float]:
    """(syllable nuclei, sounding seconds) of `samples`, after de Jong & Wempe (see the module)."""
    import parselmouth

    sound = parselmouth.Sound(np.asarray(samples, dtype=np.float64), sampling_frequency=rate)
    if sound.duration < 0.1:  # shorter than Praat's intensity window
        return 0, 0.0
    # A 100 Hz minimum pitch gives a 32 ms window: it smooths out single periods, not syllables.
    intensity = sound.to_intensity(minimum_pitch=100.0, time_step=0.01)
    db, times = intensity.values[0], intensity.xs()
    if db.size == 0:
        return 0, 0.0
    floor = float(np.percentile(db, 99)) - SILENCE_DB
    pitch = sound.to_pitch(0.01, MEASURE_FLOOR_HZ, MEASURE_CEILING_HZ)
    voiced = [pitch.get_value_at_time(times[i]) for i in _nuclei(db, floor)]
    return sum(1 for f0 in voiced if f0 == f0 and f0 > 0), _sounding_seconds(db >= floor, times[1] - times[0])


def _nuclei(db: np.ndarray, floor: float) -> list[int]:
    """Indices of intensity peaks above `floor` separated by dips of at least MIN_DIP_DB."""
    peaks = [i for i in range(1, db.size - 1) if db[i] > db[i - 1] and db[i] >= db[i + 1] and db[i] >= floor]
    kept: list[int] = []
    for i in peaks:
        if kept and db[kept[-1] : i + 1].min() > min(db[kept[-1]], db[i]) - MIN_DIP_DB:
            if db[i] > db[kept[-1]]:  # no real dip between them: one syllable, at the higher peak
                kept[-1] = i
            continue
        kept.append(i)
    return kept


def _sounding_seconds(sounding: np.ndarray, step: float) -> float:
    """Seconds from each sounding stretch's start to its end, gaps under MIN_PAUSE_S counted as sounding."""
    idx = np.flatnonzero(sounding)
    if idx.size == 0:
        return 0.0
    gaps = np.diff(idx) - 1
    pauses = gaps[gaps * step >= MIN_PAUSE_S]
    return float((idx[-1] - idx[0] + 1 - pauses.sum()) * step)


# --- the neutral reference -----------------------------------------------------------------------


def neutral_clips(manifest: str | Path, emotion: str = "neutral") -> list[Path]:
    """The audio files of `manifest` (JSON lines with `audio` and `emotion`) labelled `emotion`."""
    from blsp_emo.evaluate import read_ser_manifest

    manifest = Path(manifest)
    clips = [Path(audio) for audio, label, _ in read_ser_manifest(manifest) if label == emotion]
    if not clips:
        raise ValueError(
            f"{manifest} has no clip with emotion {emotion!r}; pass a training manifest "
            "(`python -m train synth ... --emotions neutral` writes one)"
        )
    return clips


def build_reference(readings: Iterable[ProsodyReading], source: str = "", command: str = "") -> NeutralReference:
    """Each reading's spread over `readings` (pitch readings over the voiced clips only)."""
    readings = list(readings)
    spreads = {}
    for measure in MEASURES:
        values = [getattr(r, measure) for r in readings]
        values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
        if values.size == 0:
            raise ValueError(f"no clip of {source or 'the reference'} gave a {measure}; are they all silent?")
        spreads[measure] = Spread(tuple(round(float(v), 4) for v in np.percentile(values, QUANTILES)), int(values.size))
    return NeutralReference(spreads, source, command)


def save_reference(reference: NeutralReference, path: str | Path) -> None:
    row = {
        "source": reference.source,
        "command": reference.command,
        "quantiles_at": list(QUANTILES),
        "spreads": {m: asdict(s) for m, s in reference.spreads.items()},
    }
    Path(path).write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")


def load_reference(path: str | Path) -> NeutralReference:
    """The reference in `path`, or ValueError naming the file and how to remake it."""
    try:
        row = json.loads(Path(path).read_text(encoding="utf-8"))
        if tuple(row["quantiles_at"]) != QUANTILES:
            raise ValueError(f"quantiles at {row['quantiles_at']}, expected {list(QUANTILES)}")
        spreads = {m: Spread(tuple(map(float, s["quantiles"])), int(s["n"])) for m, s in row["spreads"].items()}
        missing = [m for m in MEASURES if m not in spreads]
        if missing:
            raise ValueError(f"no spread for {missing}")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path} is not a neutral reference ({e}); remake it with "
            "`python -m blsp_emo evidence-reference --manifest TRAIN_MANIFEST.jsonl --out FILE`"
        ) from e
    return NeutralReference(spreads, row.get("source", ""), row.get("command", ""))


# --- comparing -----------------------------------------------------------------------------------


def compare(reading: ProsodyReading, reference: NeutralReference) -> tuple[Comparison, ...]:
    """Each measured reading against the reference (pitch ones left out for an unvoiced clip)."""
    out = []
    for measure in MEASURES:
        value = getattr(reading, measure)
        if value is None or not math.isfinite(value):
            continue
        spread = reference.spreads[measure]
        percentile = spread.percentile(value)
        difference, unit = _difference(measure, value, spread.median)
        direction = "lower" if percentile < TYPICAL[0] else "higher" if percentile > TYPICAL[1] else "typical"
        out.append(Comparison(measure, value, spread.median, difference, unit, percentile, direction))
    return tuple(out)


def _difference(measure: str, value: float, median: float) -> tuple[float, str]:
    # Pitch is heard on a log scale (semitones); a rate as a share faster or slower.
    if measure == "median_pitch_hz":
        return 12 * math.log2(value / median), "st"
    if measure == "speaking_rate":
        return (100 * (value / median - 1) if median > 0 else 0.0), "%"
    return value - median, "st" if measure == "pitch_range_st" else "dB"
