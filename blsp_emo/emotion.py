"""The emotion vocabulary of BLSP-Emo and the small helpers that read emotion off a model."""

from __future__ import annotations

import re

import torch

# The head's output order in the released code (`emotion2idx`): keep it, checkpoints depend on it.
EMOTIONS: tuple[str, ...] = ("neutral", "happy", "angry", "sad", "surprise")
EMOTION_TO_ID: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the first `lengths[b]` positions of each row: (B, T, D), (B,) -> (B, D)."""
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    mask = mask.to(x.dtype).unsqueeze(-1)
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def scores_by_label(probs: torch.Tensor, labels: tuple[str, ...] = EMOTIONS) -> dict[str, float]:
    """One row of probabilities (C,) -> {label: probability} in head order."""
    if probs.shape[-1] != len(labels):
        raise ValueError(f"got {probs.shape[-1]} emotion scores for {len(labels)} labels {labels}")
    return {label: float(p) for label, p in zip(labels, probs.float().tolist())}


_LABEL_PATTERN = re.compile(r"\b(" + "|".join(EMOTIONS) + r"|happiness|anger|sadness|surprised)\b", re.I)
_SYNONYMS = {"happiness": "happy", "anger": "angry", "sadness": "sad", "surprised": "surprise"}


def parse_emotion(text: str) -> str | None:
    """The emotion label named in a free-text SER answer, or None when it names none or several.

    The released repo ships no parsing rule; answers look like "The emotion tone of the speech
    provided is neutral.", so we accept exactly one distinct label (or a common noun form).
    """
    found = {_SYNONYMS.get(m.lower(), m.lower()) for m in _LABEL_PATTERN.findall(text)}
    return found.pop() if len(found) == 1 else None
