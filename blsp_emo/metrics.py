"""The scores every evaluation here reports, each computed in one place: word and character error
rates of transcripts, and accuracy, macro-F1 and the confusion matrix of labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance: substitutions + deletions + insertions, each costing 1."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def plain_words(text: str) -> str:
    """Lower case, punctuation dropped (apostrophes kept), single spaces: how transcripts are compared."""
    return " ".join("".join(c if c.isalnum() or c in " '" else " " for c in text.lower()).split())


def error_rate(references: Sequence[str], hypotheses: Sequence[str], unit: str = "word") -> float:
    """Corpus WER (unit "word") or CER (unit "char", spaces included): all edits / all reference units.

    Texts are compared as given; pass them through `plain_words` first to ignore case and punctuation.
    """
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    split = str.split if unit == "word" else list
    pairs = [(split(r), split(h)) for r, h in zip(references, hypotheses, strict=True)]
    length = sum(len(r) for r, _ in pairs)
    if length == 0:
        raise ValueError("the references are empty; the error rate is undefined")
    return sum(edit_distance(r, h) for r, h in pairs) / length


@dataclass(frozen=True)
class LabelScores:
    """Scores of predicted labels; `confusion[true][predicted]` counts items."""

    accuracy: float
    macro_f1: float
    n: int
    confusion: dict[str, dict[str, int]]
    unparseable: int = 0  # predictions that named no label (None): counted as wrong

    def recall(self) -> dict[str, float | None]:
        """Per true label: the share of its items predicted right, unparseable ones aside (None: no items)."""
        return {
            label: row[label] / sum(row.values()) if sum(row.values()) else None
            for label, row in self.confusion.items()
        }


def label_scores(truth: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str]) -> LabelScores:
    """Accuracy, macro-F1 over the labels that occur in `truth` or `predicted`, and the confusion.

    A None prediction (unparseable) is wrong: a false negative for its true label.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true labels but {len(predicted)} predictions")
    unknown = (set(truth) | set(predicted)) - set(labels) - {None}
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not among {list(labels)}")
    confusion = {t: {p: 0 for p in labels} for t in labels}
    for t, p in zip(truth, predicted):
        if p is not None:
            confusion[t][p] += 1
    present = [label for label in labels if label in set(truth) | set(predicted)]
    f1s = []
    for label in present:
        tp = confusion[label][label]
        fp = sum(confusion[t][label] for t in labels) - tp
        fn = sum(1 for t in truth if t == label) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    n = len(truth)
    return LabelScores(
        accuracy=sum(confusion[label][label] for label in labels) / n if n else 0.0,
        macro_f1=sum(f1s) / len(f1s) if f1s else 0.0,
        n=n,
        confusion=confusion,
        unparseable=sum(p is None for p in predicted),
    )
