"""Ending a reply where it starts to repeat itself.

A small LLM decoding greedily falls into loops: SmolLM2-135M answers "I'm sorry for your loss. I'm
sorry for your loss. I'm sorry for your loss. ..." until `max_new_tokens` (docs/world.md). The
released demo has no repetition penalty, and a penalty would change every token's probability; this
changes none. It only ends the reply before the first sentence that says an earlier one again (or
after the third of a symbol it keeps repeating, "🌟🌟🌟🌟..."), and holds back a sentence in
progress while it could still be such a repeat, so a streamed reply only grows and never shows
words that the end takes back.
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? or an ellipsis with a space after it ("3.5" and "e.g.x" do not end one).
_END = re.compile(r"[.!?…]+(?=\s)")
# An emoji or other non-ASCII symbol, "!" or "?", four times in a row: the fourth starts a loop.
# ASCII marks such as "...." or "----" are left alone: text and markdown use them.
SYMBOL_RUN = 3
_RUN = re.compile(r"([^\x00-\x7f\w\s]|[!?])\1{" + str(SYMBOL_RUN) + ",}")


def _key(sentence: str) -> str:
    """What makes two sentences the same: their words, whatever the case, spacing or end mark."""
    return " ".join(sentence.lower().split()).rstrip(".!?…")


def sentences(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, complete) of each sentence; the last is incomplete: it may still grow."""
    spans, start = [], 0
    for end in _END.finditer(text):
        spans.append((start, end.end(), True))
        start = end.end()
    spans.append((start, len(text), False))
    return [span for span in spans if text[span[0] : span[1]].strip()]


def cut_repeats(text: str) -> tuple[str, bool]:
    """`text` up to its first repeat: (what to show, whether to stop: a whole sentence said again,
    or a symbol's fourth time in a row).

    The last sentence, with no space after it yet, may still be growing: it is held back (left out)
    while it is the start of an earlier sentence, and shown once it differs. At the end of a reply
    this drops a last sentence that only said an earlier one again (or began to).
    """
    if run := _RUN.search(text):
        text, looped = text[: run.start() + SYMBOL_RUN], True
    else:
        looped = False
    seen: set[str] = set()
    for start, end, complete in sentences(text):
        key = _key(text[start:end])
        if complete and key in seen:
            return text[:start].rstrip(), True
        if not complete and any(earlier.startswith(key) for earlier in seen):
            return text[:start].rstrip(), False
        seen.add(key)
    return text, looped
