"""What the ratings say: mean scores with bootstrap intervals, win rates, Bradley–Terry, agreement.

Input rows are the export's (one per trial, `StudyStore.ratings()` or the CSV). Intervals are
percentile bootstraps that resample *raters* (with all their trials), since one rater's ratings
are not independent of each other.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from blsp_emo.study.assign import OWN_RECORDING

Rows = Sequence[dict]
TIES = ("tie", "both-bad")  # neither system preferred: half a win to each in Bradley–Terry


def systems_in(rows: Rows) -> list[str]:
    return sorted({r["system_a"] for r in rows} | {r["system_b"] for r in rows})


def _by_rater(rows: Rows) -> list[list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        groups[r["rater_id"]].append(r)
    return list(groups.values())


def _resamples(rows: Rows, n_boot: int, rng: np.random.Generator):
    """`n_boot` bootstrap data sets, each built from raters drawn with replacement."""
    groups = _by_rater(rows)
    for _ in range(n_boot):
        picks = rng.integers(len(groups), size=len(groups))
        yield [r for i in picks for r in groups[i]]


def _scores(rows: Rows, system: str, question: str) -> list[float]:
    return [float(r[f"{question}_{side}"]) for r in rows for side in "ab" if r[f"system_{side}"] == system]


def mean_scores(rows: Rows, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per system: n replies rated, mean empathy and quality (0–10) with 95 % bootstrap intervals."""
    rng, out = np.random.default_rng(seed), []
    systems = systems_in(rows)
    boots = list(_resamples(rows, n_boot, rng)) if rows else []
    for system in systems:
        row = {"system": system, "n": len(_scores(rows, system, "empathy"))}
        for q in ("empathy", "quality"):
            values = _scores(rows, system, q)
            means = [np.mean(v) for b in boots if (v := _scores(b, system, q))]
            row[f"{q}_mean"] = float(np.mean(values)) if values else math.nan
            row[f"{q}_lo"], row[f"{q}_hi"] = _interval(means)
        out.append(row)
    return out


def _interval(samples) -> tuple[float, float]:
    if len(samples) == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def outcome_matrix(rows: Rows, systems: Sequence[str]) -> np.ndarray:
    """W[i, j]: how often system i was preferred over j, ties and both-bad counting half each way."""
    index = {s: i for i, s in enumerate(systems)}
    wins = np.zeros((len(systems), len(systems)))
    for r in rows:
        a, b = index[r["system_a"]], index[r["system_b"]]
        winner = r["winner"]
        if winner in TIES:
            wins[a, b] += 0.5
            wins[b, a] += 0.5
        else:
            wins[(a, b) if winner == r["system_a"] else (b, a)] += 1
    return wins


def pairwise(rows: Rows) -> list[dict]:
    """Per pair of systems: comparisons, wins each way, ties, both-bad, and A's win rate (ties half)."""
    table = {}
    for r in rows:
        a, b = sorted((r["system_a"], r["system_b"]))
        t = table.setdefault(
            (a, b), {"system_1": a, "system_2": b, "n": 0, "wins_1": 0, "wins_2": 0, "ties": 0, "both_bad": 0}
        )
        t["n"] += 1
        w = r["winner"]
        t["wins_1" if w == a else "wins_2" if w == b else "ties" if w == "tie" else "both_bad"] += 1
    for t in table.values():
        t["win_rate_1"] = (t["wins_1"] + 0.5 * (t["ties"] + t["both_bad"])) / t["n"]
    return [table[k] for k in sorted(table)]


def fit_bradley_terry(wins: np.ndarray, prior: float = 0.5, iters: int = 500, tol: float = 1e-10) -> np.ndarray:
    """Bradley–Terry log-strengths (mean 0) by Hunter's (2004) minorise–maximise updates.

    P(i beats j) = p_i / (p_i + p_j). `prior` adds that many virtual ties to every pair, which keeps
    a system that never lost finite and pulls thinly compared systems toward the middle.
    """
    k = len(wins)
    w = wins + prior * 0.5 * (1 - np.eye(k))
    games = w + w.T
    p = np.ones(k)
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = w.sum(axis=1) / np.maximum(denom, 1e-300)
        new /= np.exp(np.mean(np.log(new)))  # geometric mean 1: the scale is arbitrary
        if np.max(np.abs(new - p)) < tol:
            p = new
            break
        p = new
    return np.log(p)


def bradley_terry(rows: Rows, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Strengths on the Elo scale (400·log10, mean 1000) with 95 % bootstrap intervals, best first."""
    systems = systems_in(rows)
    if len(systems) < 2:
        return []
    rng = np.random.default_rng(seed)
    to_elo = 400 / math.log(10)
    point = fit_bradley_terry(outcome_matrix(rows, systems)) * to_elo + 1000
    boots = np.array(
        [fit_bradley_terry(outcome_matrix(b, systems)) * to_elo + 1000 for b in _resamples(rows, n_boot, rng)]
    )
    out = []
    for i, s in enumerate(systems):
        lo, hi = _interval(boots[:, i]) if len(boots) else (math.nan, math.nan)
        out.append(
            {
                "system": s,
                "strength": float(point[i]),
                "lo": lo,
                "hi": hi,
                "comparisons": int(sum(1 for r in rows if s in (r["system_a"], r["system_b"]))),
            }
        )
    out.sort(key=lambda r: -r["strength"])
    for rank, r in enumerate(out, 1):
        r["rank"] = rank
    return out


def agreement(rows: Rows) -> dict:
    """Inter-rater agreement on items several raters judged (configured clips only).

    Krippendorff's alpha, interval level, for the 0–10 scores of each reply (clip × system), and
    nominal level for the preference of each comparison (clip × pair; the preferred system's name,
    tie or both-bad, so the A/B order does not matter).
    """
    import krippendorff

    shared = [r for r in rows if r["stimulus"] != OWN_RECORDING]
    raters = sorted({r["rater_id"] for r in shared})
    out = {"raters": len(raters)}
    for q in ("empathy", "quality"):
        units = defaultdict(dict)
        for r in shared:
            for side in "ab":
                unit = units[(r["stimulus"], r[f"system_{side}"])]
                unit.setdefault(r["rater_id"], []).append(float(r[f"{q}_{side}"]))
        out[q] = _alpha(krippendorff, units, raters, "interval")
    units, labels = defaultdict(dict), {}
    for r in shared:
        unit = (r["stimulus"], *sorted((r["system_a"], r["system_b"])))
        units[unit].setdefault(r["rater_id"], []).append(labels.setdefault(r["winner"], len(labels)))
    out["preference"] = _alpha(krippendorff, units, raters, "nominal")
    return out


def _alpha(krippendorff, units: dict, raters: list[str], level: str) -> dict:
    """Alpha over the items two or more raters judged; a rater's repeated scores of an item are averaged
    (interval) or their first answer taken (nominal)."""
    shared = {u: v for u, v in units.items() if len(v) >= 2}  # only items two or more raters judged
    result = {"alpha": None, "items": len(shared), "level": level}
    if not shared:
        return result
    column = {r: i for i, r in enumerate(raters)}
    data = np.full((len(raters), len(shared)), np.nan)
    for j, by_rater in enumerate(shared.values()):
        for rater, values in by_rater.items():
            data[column[rater], j] = np.mean(values) if level == "interval" else values[0]
    try:
        result["alpha"] = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
    except ValueError as e:  # e.g. every rating identical: alpha is undefined, say why
        result["note"] = str(e)
    if result["alpha"] is not None and math.isnan(result["alpha"]):
        result["alpha"] = None
    return result
