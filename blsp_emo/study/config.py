"""A study configuration: which clips, which systems, how many trials, which questions.

A study is a JSON file (paths relative to it), checked completely when it is loaded so that a typo
stops the app at start with a message naming the item, not a rater halfway through:

    {"id": "tone-empathy-demo", "title": "...", "instructions": "...",
     "stimuli": [{"id": "sad-m", "audio": "../examples/x_sad.wav"}, ...],
     "systems": ["blsp-emo", "cascade"], "trials_per_rater": 4,
     "questions": [{"id": "empathy", "label": "...", "help": "..."}, {"id": "quality", ...}],
     "allow_own_recording": false, "spoken_replies": false,
     "generation": {"max_new_tokens": 64}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from blsp_emo.options import GenerationOptions

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_STUDY = ASSETS / "studies" / "example.json"
QUESTION_IDS = ("empathy", "quality")  # the paper's two 0–10 scales; the store has a column for each
SCALE = (0, 10)
PREFERENCES = ("A", "B", "tie", "both-bad")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class StudyConfigError(ValueError):
    """A study file that cannot run; the message names the file and the item."""


@dataclass(frozen=True)
class Stimulus:
    id: str
    audio: Path
    note: str = ""


@dataclass(frozen=True)
class Question:
    id: str  # one of QUESTION_IDS
    label: str
    help: str = ""


@dataclass(frozen=True)
class StudyConfig:
    id: str
    title: str
    instructions: str
    stimuli: tuple[Stimulus, ...]
    systems: tuple[str, ...]
    trials_per_rater: int
    questions: tuple[Question, ...]
    allow_own_recording: bool = False
    spoken_replies: bool = False
    max_new_tokens: int = 64
    path: Path | None = field(default=None, compare=False)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every unordered pair of systems, each in the order the file lists them."""
        return tuple(combinations(self.systems, 2))

    @property
    def options(self) -> GenerationOptions:
        """Greedy, so the reply to a configured clip is the same for every rater and can be computed once."""
        return GenerationOptions(max_new_tokens=self.max_new_tokens, greedy=True, seed=0)

    def stimulus(self, stimulus_id: str) -> Stimulus:
        for s in self.stimuli:
            if s.id == stimulus_id:
                return s
        raise KeyError(f"study {self.id!r} has no stimulus {stimulus_id!r}")

    def require_systems(self, loaded: Iterable[str]) -> None:
        """Refuse a study naming a system the app did not load (or that does not exist)."""
        missing = [s for s in self.systems if s not in set(loaded)]
        if missing:
            raise StudyConfigError(
                f"{self.path or self.id}: system {missing[0]!r} is in the study but not loaded; "
                f"loaded: {sorted(loaded)} — fix `systems` or start the app with that system"
            )

    @classmethod
    def load(cls, path: str | Path, known_systems: Iterable[str] | None = None) -> StudyConfig:
        """Read and check a study file; `known_systems` defaults to the registry's names."""
        path = Path(path)
        if not path.is_file():
            raise StudyConfigError(f"study file {path} does not exist; pass --study FILE (default {DEFAULT_STUDY})")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StudyConfigError(f"{path}: not valid JSON ({e})") from e
        if known_systems is None:
            from blsp_emo.systems import available_systems

            known_systems = available_systems()
        return cls.from_dict(raw, path, tuple(known_systems))

    @classmethod
    def from_dict(cls, raw: Mapping, path: Path, known_systems: tuple[str, ...]) -> StudyConfig:
        where = str(path)
        if not isinstance(raw, Mapping):
            raise StudyConfigError(f"{where}: expected a JSON object with id, stimuli, systems, ...")
        unknown_keys = set(raw) - {
            "id",
            "title",
            "instructions",
            "stimuli",
            "systems",
            "trials_per_rater",
            "questions",
            "allow_own_recording",
            "spoken_replies",
            "generation",
        }
        if unknown_keys:
            raise StudyConfigError(f"{where}: unknown key {sorted(unknown_keys)[0]!r}; see {DEFAULT_STUDY.name}")
        study_id = _text(raw, "id", where)
        if not _ID.match(study_id):
            raise StudyConfigError(f"{where}: id {study_id!r} must be letters, digits, '-', '_' or '.'")
        stimuli = tuple(_stimulus(item, i, path) for i, item in enumerate(_list(raw, "stimuli", where)))
        _unique([s.id for s in stimuli], "stimulus id", where)
        systems = tuple(str(s) for s in _list(raw, "systems", where))
        for name in systems:
            if name not in known_systems:
                raise StudyConfigError(f"{where}: unknown system {name!r}; available: {list(known_systems)}")
        _unique(list(systems), "system", where)
        if len(systems) < 2:
            raise StudyConfigError(f"{where}: a blind comparison needs at least 2 systems, got {list(systems)}")
        trials = raw.get("trials_per_rater")
        if not isinstance(trials, int) or isinstance(trials, bool) or not 1 <= trials <= 200:
            raise StudyConfigError(f"{where}: trials_per_rater must be a whole number 1–200, got {trials!r}")
        questions = tuple(_question(q, i, where) for i, q in enumerate(_list(raw, "questions", where)))
        if sorted(q.id for q in questions) != sorted(QUESTION_IDS):
            raise StudyConfigError(
                f"{where}: questions must be exactly {list(QUESTION_IDS)} (0–10 each), got {[q.id for q in questions]}"
            )
        generation = raw.get("generation", {})
        max_new_tokens = generation.get("max_new_tokens", 64) if isinstance(generation, Mapping) else None
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 1024:
            raise StudyConfigError(f"{where}: generation.max_new_tokens must be 1–1024, got {max_new_tokens!r}")
        return cls(
            study_id,
            str(raw.get("title", study_id)),
            str(raw.get("instructions", "")),
            stimuli,
            systems,
            trials,
            questions,
            _flag(raw, "allow_own_recording", where),
            _flag(raw, "spoken_replies", where),
            max_new_tokens,
            path,
        )


def _text(raw: Mapping, key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise StudyConfigError(f"{where}: `{key}` must be a non-empty string, got {value!r}")
    return value.strip()


def _list(raw: Mapping, key: str, where: str) -> list:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise StudyConfigError(f"{where}: `{key}` must be a non-empty list, got {value!r}")
    return value


def _flag(raw: Mapping, key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise StudyConfigError(f"{where}: `{key}` must be true or false, got {value!r}")
    return value


def _unique(values: list[str], what: str, where: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise StudyConfigError(f"{where}: {what} {v!r} appears twice")
        seen.add(v)


def _stimulus(item, index: int, path: Path) -> Stimulus:
    where = f"{path}: stimuli[{index}]"
    if not isinstance(item, Mapping):
        raise StudyConfigError(f'{where}: expected {{"id": ..., "audio": ...}}, got {item!r}')
    stimulus_id, audio = _text(item, "id", where), _text(item, "audio", where)
    if not _ID.match(stimulus_id):
        raise StudyConfigError(f"{where}: id {stimulus_id!r} must be letters, digits, '-', '_' or '.'")
    clip = (path.parent / audio).resolve()
    if not clip.is_file():
        raise StudyConfigError(
            f"{where} ({stimulus_id}): clip {audio} not found (looked at {clip}); paths are relative to the study file"
        )
    return Stimulus(stimulus_id, clip, str(item.get("note", "")))


def _question(item, index: int, where: str) -> Question:
    where = f"{where}: questions[{index}]"
    if not isinstance(item, Mapping):
        raise StudyConfigError(f'{where}: expected {{"id": ..., "label": ...}}, got {item!r}')
    return Question(_text(item, "id", where), _text(item, "label", where), str(item.get("help", "")))
