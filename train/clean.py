"""Cleaning teacher outputs: drop refusals and "as an AI" continuations (docs/paper.md §3.3).

The rules are the released `clean_noise_examples.py`'s, with the same case sensitivity, kept as a
table so the summary can say which rule dropped how many rows, plus three for a small teacher's
failures: condolences for a loss the message never mentions (SmolLM2-135M told "They sound angry."
answers "The package is at reception." with "I'm sorry for your loss." in a third of its replies),
"as a language model" in any wording, and talk about "the user" to the user. A row is counted
under the first rule it matches. `X.jsonl` is written to `X_clean.jsonl` next to it.

With `replies` (stage 2 in the chat layout, where each output is a reply to the message), an echo
of the message is no reply either, and a rejected row that carries an emotion stays with
`"output": null` and the rule that rejected it: its reply teaches nothing, but its clip still
teaches the emotion head, so rules that drop more replies in one tone do not thin that tone.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

CLEAN_SUFFIX = "_clean"

CONDOLENCE = re.compile(r"\byour loss\b|\bcondolences?\b|\bpassed away\b|\brest in peace\b", re.IGNORECASE)
A_LOSS = re.compile(
    r"\b(die[sd]?|dying|dead|death|passed away|funeral|loss|lost|grie\w*|miss(es|ed|ing)?)\b", re.IGNORECASE
)

SPEAKS_AS_A_MODEL = re.compile(r"\bas an? (ai|language|text-based)\b", re.IGNORECASE)
THE_USER = re.compile(r"\bthe user\b", re.IGNORECASE)

# Each rule reads (output, the input text).
RULES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("starts_sorry_cannot", lambda out, _: out.startswith("I'm sorry, but I cannot")),
    ("starts_sorry_not_sure", lambda out, _: out.startswith("I'm sorry, but I'm not sure")),
    ("as_an_ai_language_model", lambda out, _: "as an ai language model" in out.lower()),
    ("sorry_but_i", lambda out, _: "i'm sorry, but i" in out.lower()),
    ("not_sure_what_you", lambda out, _: "I'm not sure what you" in out),
    ("condolence_without_loss", lambda out, text: bool(CONDOLENCE.search(out)) and not A_LOSS.search(text)),
    ("speaks_as_a_model", lambda out, _: bool(SPEAKS_AS_A_MODEL.search(out))),
    ("talks_about_the_user", lambda out, text: bool(THE_USER.search(out)) and "user" not in text.lower()),
)


def is_echo(output: str, text: str) -> bool:
    """Whether `output` only repeats `text` (case and outer spaces aside)."""
    return output.strip().lower() == text.strip().lower()


# Only where an output is a reply: a stage-1 continuation that repeats its input teaches the
# adapter to read like the transcript (the released rules keep it), a reply that does is none.
REPLY_RULES = RULES + (("echo", is_echo),)


def rejection(output: str, text: str = "", replies: bool = False) -> str | None:
    """The name of the first rule `output` (the reply to `text`) breaks, or None if the row is kept."""
    return next((name for name, breaks in (REPLY_RULES if replies else RULES) if breaks(output, text)), None)


def rejection_shares(outputs: Sequence[str], texts: Sequence[str], replies: bool = True) -> dict[str, float]:
    """For each rule, the share of `outputs` (replies to `texts`) it rejects first: what a model
    learned of the failures these rules keep out of its training (`reply-probe`, the evaluation)."""
    counts = Counter(rejection(output, text, replies) for output, text in zip(outputs, texts))
    counts.pop(None, None)
    return {rule: n / max(1, len(outputs)) for rule, n in sorted(counts.items())}


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
    return "text" in row and is_echo(str(row["output"]), str(row["text"]))


def clean_file(path: Path, replies: bool = False) -> tuple[Path, int, Counter]:
    """Write `path`'s kept rows to `{stem}_clean.jsonl`: (output path, rows kept, counts: drops by
    rule, `echoes` among the kept rows, and `tone_only`: rejected rows kept for their emotion)."""
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
            rule = rejection(str(row["output"]), str(row.get("text") or ""), replies)
            if rule is None:
                dst.write(line if line.endswith("\n") else line + "\n")
                kept += 1
                dropped["echoes"] += echoes(row)
                continue
            dropped[rule] += 1
            if replies and row.get("emotion"):
                dst.write(json.dumps({**row, "output": None, "rejected": rule}, ensure_ascii=False) + "\n")
                dropped["tone_only"] += 1
    return out, kept, dropped


def clean(paths: Sequence[str | Path], replies: bool = False) -> dict:
    """Clean every file; the summary counts rows read, kept, dropped per rule, the kept rows whose
    output only echoes the input text, and (`replies`) the dropped rows kept for their emotion."""
    files, total_kept, total_dropped, total_echoes, total_tone = [], 0, Counter(), 0, 0
    for path in input_files(paths):
        out, kept, counts = clean_file(path, replies)
        echoed, tone = counts.pop("echoes", 0), counts.pop("tone_only", 0)
        files.append(
            {
                "input": str(path),
                "output": str(out),
                "kept": kept,
                "dropped": dict(counts),
                "echoes": echoed,
                "tone_only": tone,
            }
        )
        total_kept += kept
        total_dropped += counts
        total_echoes += echoed
        total_tone += tone
    read = total_kept + sum(total_dropped.values())
    summary = {"read": read, "kept": total_kept, "dropped": dict(total_dropped), "echoes": total_echoes}
    return {**summary, "tone_only": total_tone, "files": files}
