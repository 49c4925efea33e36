"""Calibrated emotion probabilities: temperature scaling, expected calibration error, the unsure threshold.

A classifier's softmax is often over-confident. Temperature scaling (Guo et al., 2017) divides
the logits by one number T fitted on held-out clips by minimising their negative log-likelihood;
the top label never changes, only how sure the probabilities say it is. T = 1 is the identity.

Expected calibration error (ECE): the clips are put in 15 equal-width bins by their top
probability ((0, 1/15], (1/15, 2/15], ..., (14/15, 1]); ECE is the clip-weighted mean over bins
of |accuracy in the bin - mean top probability in the bin|. 0 is perfect; 0.05 means the shown
probability is off from how often it is right by five points on average.

The unsure threshold: the lowest top probability t such that the clips whose top probability is
at least t are heard right at least `target` of the time (`choose_threshold`). Below it the
emotion is shown as unsure.

`python -m blsp_emo calibrate` fits both on held-out clips and writes `calibration.json` beside
the model; `load_calibration` reads it (absent: T = 1 and no threshold, the behaviour before).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
# 1/T is searched over [e^-5, e^5]: T from 0.007 to 148, far past any useful scaling.
_LOG_INVERSE_T = (-5.0, 5.0)


@dataclass(frozen=True)
class Threshold:
    """The unsure threshold and what it keeps on the clips it was chosen on."""

    value: float  # top probability below this: unsure
    target: float  # the accuracy asked of the kept clips
    kept_share: float
    kept_accuracy: float


@dataclass(frozen=True)
class Calibration:
    """What `calibration.json` holds."""

    temperature: float
    unsure_below: float | None = None
    model_revision: str | None = None  # the weights it was fitted on (`SpokenDialogueSystem.revision`)
    bins: int = ECE_BINS
    report: dict = field(default_factory=dict)  # ECE/NLL before and after, n, threshold details
    command: str = ""

    def to_json(self) -> dict:
        return asdict(self)


IDENTITY = Calibration(1.0)


# --- the numbers ---------------------------------------------------------------------------------


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` (N, C)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, truth: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes at `temperature`."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(truth)), truth].mean())


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width bins of the top probability (see the module's docstring)."""
    probs, truth = np.asarray(probs, dtype=np.float64), np.asarray(truth)
    if probs.ndim != 2 or len(probs) != len(truth) or len(truth) == 0:
        raise ValueError(
            f"expected probabilities (N, C) and N true classes, N > 0; got {probs.shape} and {truth.shape}"
        )
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    # Bin k holds (k/bins, (k+1)/bins]; a top probability is never 0, so bin 0 starts just above it.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for k in range(bins):
        inside = which == k
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, truth: np.ndarray, tolerance: float = 1e-7) -> float:
    """The T minimising the held-out NLL of softmax(logits / T), by golden-section search.

    NLL is convex in 1/T (a log-sum-exp of a linear function of it, minus a linear term), so it has
    one minimum and a 1-D search on log(1/T) finds it without gradients.
    """
    logits, truth = np.asarray(logits, dtype=np.float64), np.asarray(truth)
    if logits.ndim != 2 or len(logits) != len(truth) or len(truth) < 2:
        raise ValueError(f"expected logits (N, C) and N true classes with N >= 2; got {logits.shape}, {truth.shape}")

    def cost(log_beta: float) -> float:
        return nll(logits, truth, math.exp(-log_beta))

    ratio = (math.sqrt(5) - 1) / 2
    low, high = _LOG_INVERSE_T
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = cost(a), cost(b)
    while high - low > tolerance:
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = cost(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = cost(b)
    return math.exp(-(low + high) / 2)


def choose_threshold(top_probs: np.ndarray, correct: np.ndarray, target: float = 0.9) -> Threshold:
    """The lowest t where the clips with top probability >= t are right at least `target` of the time.

    The lowest such t keeps the most clips sure. Candidates are 0 (never unsure) and every clip's top
    probability. A higher target never gives a lower threshold (its candidates are a subset).
    """
    p, ok = np.asarray(top_probs, dtype=np.float64), np.asarray(correct, dtype=bool)
    if p.shape != ok.shape or p.size == 0:
        raise ValueError(
            f"expected as many top probabilities as right/wrong flags, at least one; got {p.shape}, {ok.shape}"
        )
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1], got {target}")
    order = np.argsort(-p, kind="stable")
    p_sorted, hits = p[order], np.cumsum(ok[order])
    best = None
    for t in sorted(set(p.tolist()) | {0.0}):
        kept = int(np.searchsorted(-p_sorted, -t, side="right"))  # clips with p >= t
        if kept and hits[kept - 1] / kept >= target:
            best = Threshold(float(t), target, kept / p.size, float(hits[kept - 1] / kept))
            break
    if best is None:
        raise ValueError(
            f"no threshold keeps clips right {target:.0%} of the time (the surest clip alone is "
            f"{'right' if ok[order[0]] else 'wrong'}); lower --target-accuracy"
        )
    return best


# --- the file ------------------------------------------------------------------------------------


def save_calibration(calibration: Calibration, folder: str | Path) -> Path:
    path = Path(folder) / CALIBRATION_FILE
    path.write_text(json.dumps(calibration.to_json(), indent=1) + "\n", encoding="utf-8")
    return path


def read_calibration(path: str | Path) -> Calibration:
    """`path`'s calibration, or ValueError naming the file and how to remake it."""
    try:
        row = json.loads(Path(path).read_text(encoding="utf-8"))
        calibration = Calibration(
            float(row["temperature"]),
            None if row.get("unsure_below") is None else float(row["unsure_below"]),
            row.get("model_revision"),
            int(row.get("bins", ECE_BINS)),
            dict(row.get("report", {})),
            str(row.get("command", "")),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path} is not a calibration file ({e}); remake it with "
            "`python -m blsp_emo calibrate --model DIR --manifest HELD_OUT.jsonl`"
        ) from e
    if not (calibration.temperature > 0 and math.isfinite(calibration.temperature)):
        raise ValueError(f"{path}: temperature {calibration.temperature} is not a positive number; rerun calibrate")
    return calibration


def load_calibration(folder: str | Path | None, revision: str | None = None) -> Calibration:
    """The calibration beside a model, if it was fitted on these weights; else T = 1 (`IDENTITY`).

    A file fitted on other weights (the model was rebuilt since) would scale the new model's
    probabilities by a number chosen for the old one: it is ignored with a warning instead.
    """
    path = Path(folder) / CALIBRATION_FILE if folder is not None else None
    if path is None or not path.is_file():
        return IDENTITY
    calibration = read_calibration(path)
    if revision is not None and calibration.model_revision not in (None, revision):
        warnings.warn(
            f"{path} was fitted on model revision {calibration.model_revision}, not this model's {revision}; "
            "the emotion probabilities are shown uncalibrated (T = 1) — rerun "
            "`python -m blsp_emo calibrate --model DIR --manifest HELD_OUT.jsonl`",
            stacklevel=2,
        )
        return IDENTITY
    return calibration
