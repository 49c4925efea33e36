"""The reply-tone judge: which emotion does a reply's wording fit?

A bag of word uni- and bigrams with multinomial logistic regression, trained on the teacher's
emotion-conditioned outputs (the LLM told "reply in tone e"). It scores "reply-emotion match":
how often a system's reply fits the speaker's emotion. Small, transparent and stored as JSON.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from blsp_emo.emotion import EMOTIONS

_WORD = re.compile(r"[a-z']+")


def features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


@dataclass(frozen=True)
class ToneJudge:
    vocabulary: dict[str, int]
    weights: list[list[float]]  # (n_features + 1 bias, n_labels)
    labels: tuple[str, ...] = EMOTIONS

    def _matrix(self, texts: Sequence[str]) -> torch.Tensor:
        x = torch.zeros(len(texts), len(self.vocabulary) + 1)
        x[:, -1] = 1.0
        for i, text in enumerate(texts):
            for f in features(text):
                if f in self.vocabulary:
                    x[i, self.vocabulary[f]] = 1.0
        return x

    def predict(self, texts: Sequence[str]) -> list[str]:
        if not texts:
            return []
        scores = self._matrix(texts) @ torch.tensor(self.weights)
        return [self.labels[i] for i in scores.argmax(-1).tolist()]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(
            json.dumps({"labels": self.labels, "vocabulary": self.vocabulary, "weights": self.weights})
        )

    @classmethod
    def load(cls, path: str | Path) -> ToneJudge:
        data = json.loads(Path(path).read_text())
        return cls(data["vocabulary"], data["weights"], tuple(data["labels"]))


def fit(texts: Sequence[str], labels: Sequence[str], steps: int = 300, l2: float = 1e-3, seed: int = 0) -> ToneJudge:
    counts = Counter(f for text in texts for f in set(features(text)))
    vocabulary = {f: i for i, f in enumerate(sorted(f for f, n in counts.items() if n >= 2))}
    judge = ToneJudge(vocabulary, [[0.0] * len(EMOTIONS)] * (len(vocabulary) + 1))
    x = judge._matrix(texts)
    y = torch.tensor([EMOTIONS.index(label) for label in labels])
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], len(EMOTIONS), requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=0.1)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x @ w, y) + l2 * (w[:-1] ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return ToneJudge(vocabulary, w.detach().tolist())


def fit_with_holdout(
    texts: Sequence[str], labels: Sequence[str], holdout: float = 0.2, seed: int = 0
) -> tuple[ToneJudge, float]:
    """Train on a random (1 - holdout) share; return the judge and its accuracy on the rest."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * (1 - holdout))
    train, test = order[:cut], order[cut:]
    judge = fit([texts[i] for i in train], [labels[i] for i in train], seed=seed)
    predicted = judge.predict([texts[i] for i in test])
    accuracy = sum(p == labels[i] for p, i in zip(predicted, test)) / max(1, len(test))
    return judge, accuracy
