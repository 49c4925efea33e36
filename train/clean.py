"""Cleaning teacher outputs: drop refusals and "as an AI" continuations (docs/paper.md §3.3).

The rules are the released `clean_noise_examples.py`'s, with the same case sensitivity, kept as a
table so the summary can say which rule dropped how many rows. A row is counted under the first
rule it matches. `X.jsonl` is written to `X_clean.jsonl` next to it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

CLEAN_SUFFIX = "_clean"

RULES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("starts_sorry_cannot", lambda out: out.startswith("I'm sorry, but I cannot")),
    ("starts_sorry_not_sure", lambda out: out.startswith("I'm sorry, but I'm not sure")),
    ("as_an_ai_language_model", lambda out: "as an ai language model" in out.lower()),
    ("sorry_but_i", lambda out: "i'm sorry, but i" in out.lower()),
    ("not_sure_what_you", lambda out: "I'm not sure what you" in out),
)


def rejection(output: str) -> str | None:
    """The name of the first rule `output` breaks, or None if the row is kept."""
    return next((name for name, breaks in RULES if breaks(output)), None)


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder means its `*.jsonl`, except outputs of an earlier clean."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.glob("*.jsonl") if not p.stem.endswith(CLEAN_SUFFIX))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist; pass teacher-output .jsonl files or their folder")
    return files


def echoes(row: dict) -> bool:
    """Whether a teacher output only repeats its input text: kept (the released rules keep it), but
    counted, since a teacher that mostly echoes teaches the student nothing but the transcript."""
    return "text" in row and str(row["output"]).strip() == str(row["text"]).strip()


def clean_file(path: Path) -> tuple[Path, int, Counter]:
    """Write `path`'s kept rows to `{stem}_clean.jsonl`: (output path, rows kept, counts: drops by
    rule, and `echoes` among the kept rows)."""
    out = path.with_name(path.stem + CLEAN_SUFFIX + path.suffix)
    kept, dropped = 0, Counter()
    with path.open(encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        for number, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from e
            if not isinstance(row, dict) or "output" not in row:
                raise ValueError(f"{path}:{number}: no `output`; clean runs on `python -m train teacher` output")
            rule = rejection(str(row["output"]))
            if rule is None:
                dst.write(line if line.endswith("\n") else line + "\n")
                kept += 1
                dropped["echoes"] += echoes(row)
            else:
                dropped[rule] += 1
    return out, kept, dropped


def clean(paths: Sequence[str | Path]) -> dict:
    """Clean every file; the summary counts rows read, kept, dropped per rule, and the kept rows
    whose output only echoes the input text."""
    files, total_kept, total_dropped, total_echoes = [], 0, Counter(), 0
    for path in input_files(paths):
        out, kept, counts = clean_file(path)
        echoed = counts.pop("echoes", 0)
        files.append({"input": str(path), "output": str(out), "kept": kept, "dropped": dict(counts), "echoes": echoed})
        total_kept += kept
        total_dropped += counts
        total_echoes += echoed
    read = total_kept + sum(total_dropped.values())
    return {"read": read, "kept": total_kept, "dropped": dict(total_dropped), "echoes": total_echoes, "files": files}
