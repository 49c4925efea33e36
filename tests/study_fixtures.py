"""Shared pieces of the study tests: a short study over tiny clips and the tiny bundle's systems."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

import tiny

SYSTEMS = ["blsp-emo", "blsp", "cascade"]  # 3 pairs × 2 orders: 6 conditions


def write_study(folder: Path, trials: int = 2, **overrides) -> Path:
    """A study file with two 2 s tone clips next to it (relative paths, as a researcher writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, freq in (("low", 150.0), ("high", 260.0)):
        sf.write(folder / f"{name}.wav", tiny.tone(2.0, freq), 16000)
    study = {
        "id": "short-study",
        "title": "Short test study",
        "instructions": "Rate the replies.",
        "stimuli": [{"id": "low", "audio": "low.wav"}, {"id": "high", "audio": "high.wav"}],
        "systems": SYSTEMS,
        "trials_per_rater": trials,
        "questions": [{"id": "empathy", "label": "Empathy"}, {"id": "quality", "label": "Quality"}],
        "allow_own_recording": True,
        "generation": {"max_new_tokens": 6},
        **overrides,
    }
    path = folder / "study.json"
    path.write_text(json.dumps(study))
    return path
