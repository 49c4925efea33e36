"""`study report`: the analysis written as CSV tables, JSON, a Markdown summary and PNG plots."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blsp_emo.study import analysis
from blsp_emo.study.assign import balance
from blsp_emo.study.config import StudyConfig


@dataclass(frozen=True)
class Report:
    summary: dict  # everything computed, JSON-ready
    markdown: str
    tables: tuple[Path, ...]
    plots: tuple[Path, ...]


def analyse(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    return {
        "ratings": len(rows),
        "raters": len({r["rater_id"] for r in rows}),
        "studies": sorted({r["study_id"] for r in rows}),
        "scores": analysis.mean_scores(rows, n_boot, seed),
        "pairwise": analysis.pairwise(rows),
        "bradley_terry": analysis.bradley_terry(rows, n_boot, seed),
        "agreement": analysis.agreement(rows) if rows else {},
        "bootstrap": {"resamples": n_boot, "unit": "rater", "interval": "95 % percentile"},
    }


def split_unplayed(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(played, unplayed): ratings whose clips the server saw played, and the rest (flagged `listened` 0).

    Rows without the field (synthetic or hand-made tables) count as played.
    """
    played, unplayed = [], []
    for r in rows:
        (unplayed if r.get("listened", 1) in (0, False, "0", "False", "") else played).append(r)
    return played, unplayed


def write_report(
    rows: list[dict],
    out: str | Path,
    n_boot: int = 1000,
    seed: int = 0,
    assignment: dict | None = None,
    include_unplayed: bool = False,
) -> Report:
    """Analyse `rows` (export rows) and write tables, plots and report.md into `out`.

    Ratings whose audio the server never saw played are left out unless `include_unplayed`; the
    report says how many.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    played, unplayed = split_unplayed(rows)
    if not include_unplayed:
        rows = played
    summary = analyse(rows, n_boot, seed)
    summary["unplayed"] = {"ratings": len(unplayed), "included": include_unplayed}
    if assignment is not None:
        summary["assignment"] = assignment
    tables = (
        _csv(out / "scores.csv", summary["scores"]),
        _csv(out / "pairwise.csv", summary["pairwise"]),
        _csv(out / "bradley_terry.csv", summary["bradley_terry"]),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False, default=_nan) + "\n")
    plots = _plots(summary, out) if rows else ()
    markdown = to_markdown(summary, [p.name for p in plots])
    (out / "report.md").write_text(markdown)
    return Report(summary, markdown, (*tables, out / "summary.json", out / "report.md"), plots)


def _nan(value):
    raise TypeError(f"not JSON: {value!r}")


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        if rows:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows({k: _round(v) for k, v in r.items()} for r in rows)
    return path


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


def _f(v, digits=2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def to_markdown(summary: dict, plots: list[str] = ()) -> str:
    lines = [
        f"**{_n(summary['ratings'], 'rating')} from {_n(summary['raters'], 'rater')}** "
        f"(study {', '.join(summary['studies']) or '–'}); intervals: 95 % bootstrap over raters, "
        f"{summary['bootstrap']['resamples']} resamples.",
        "",
        "| system | replies rated | empathy (0–10) | quality (0–10) |",
        "|---|---|---|---|",
    ]
    for r in summary["scores"]:
        cells = [f"{_f(r[q + '_mean'])} [{_f(r[q + '_lo'])}, {_f(r[q + '_hi'])}]" for q in ("empathy", "quality")]
        lines.append(f"| {r['system']} | {r['n']} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "| rank | system | Bradley–Terry strength (Elo scale) | 95 % interval | comparisons |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rank']} | {r['system']} | {r['strength']:.0f} | [{_f(r['lo'], 0)}, {_f(r['hi'], 0)}] | "
        f"{r['comparisons']} |"
        for r in summary["bradley_terry"]
    ]
    lines += [
        "",
        "| pair | comparisons | wins | ties | both bad | win rate of the first (ties ½) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['system_1']} vs {p['system_2']} | {p['n']} | {p['wins_1']}–{p['wins_2']} | {p['ties']} | "
        f"{p['both_bad']} | {p['win_rate_1']:.2f} |"
        for p in summary["pairwise"]
    ]
    unplayed = summary.get("unplayed") or {}
    if unplayed.get("ratings"):
        lines += [
            "",
            f"{_n(unplayed['ratings'], 'rating')} whose audio was not played "
            + (
                "are included above."
                if unplayed["included"]
                else "left out (the server never saw the clips played; `--include-unplayed` counts them)."
            ),
        ]
    agree = summary.get("agreement") or {}
    if agree:
        lines += [
            "",
            "Inter-rater agreement (Krippendorff's alpha on items rated by ≥ 2 raters): "
            + ", ".join(
                f"{q} {_f(agree[q]['alpha'])} ({agree[q]['items']} items)" for q in ("empathy", "quality", "preference")
            ),
        ]
    if "assignment" in summary:
        a = summary["assignment"]
        lines += [
            "",
            f"Assignment balance: each pair and order shown {a['min']}–{a['max']} times (spread {a['spread']}).",
        ]
    lines += [f"\n![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _plots(summary: dict, out: Path) -> tuple[Path, ...]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    paths = (
        _plot_scores(plt, summary["scores"], out / "scores.png"),
        _plot_strengths(plt, summary["bradley_terry"], out / "bradley_terry.png"),
        _plot_preferences(plt, summary["pairwise"], out / "preferences.png"),
    )
    return tuple(p for p in paths if p is not None)


def _plot_scores(plt, scores: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * len(scores) * 2))
    y = np.arange(len(scores))
    for offset, q, color in ((-0.18, "empathy", "#c2185b"), (0.18, "quality", "#3949ab")):
        means = np.array([r[f"{q}_mean"] for r in scores])
        err = np.array([[r[f"{q}_mean"] - r[f"{q}_lo"], r[f"{q}_hi"] - r[f"{q}_mean"]] for r in scores]).T
        ax.errorbar(means, y + offset, xerr=np.nan_to_num(err), fmt="o", color=color, capsize=4, label=q)
    ax.set_yticks(y, [r["system"] for r in scores])
    ax.set_xlim(0, 10)
    ax.set_xlabel("mean rating (0–10), 95 % bootstrap interval")
    ax.legend(loc="lower right", frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.invert_yaxis()
    return _save(plt, fig, path)


def _plot_strengths(plt, bt: list[dict], path: Path) -> Path | None:
    if not bt:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.5 * len(bt)))
    y = np.arange(len(bt))
    err = np.array([[r["strength"] - r["lo"], r["hi"] - r["strength"]] for r in bt]).T
    ax.errorbar([r["strength"] for r in bt], y, xerr=np.nan_to_num(err), fmt="s", color="#00897b", capsize=4)
    ax.axvline(1000, color="grey", lw=0.8, ls=":")
    ax.set_yticks(y, [f"#{r['rank']} {r['system']}" for r in bt])
    ax.invert_yaxis()
    ax.set_xlabel("Bradley–Terry strength (Elo scale, mean 1000), 95 % bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    return _save(plt, fig, path)


def _plot_preferences(plt, pairs: list[dict], path: Path) -> Path | None:
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.5 * len(pairs)))
    y = np.arange(len(pairs))
    left = np.zeros(len(pairs))
    parts = (
        ("wins_1", "first wins", "#3949ab"),
        ("ties", "tie", "#bdbdbd"),
        ("both_bad", "both bad", "#757575"),
        ("wins_2", "second wins", "#c2185b"),
    )
    for key, label, color in parts:
        share = np.array([p[key] / p["n"] for p in pairs])
        ax.barh(y, share, left=left, color=color, label=label)
        left += share
    ax.set_yticks(y, [f"{p['system_1']} vs {p['system_2']} (n={p['n']})" for p in pairs])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of comparisons")
    ax.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keep legends below the axes
    plt.close(fig)
    return path


def assignment_summary(config: StudyConfig | None, counts: dict) -> dict | None:
    return balance(counts, config) if config is not None else None
