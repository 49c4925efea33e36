"""Ending a reply where it starts to repeat itself.

A small LLM decoding greedily falls into loops: SmolLM2-135M answers "I'm sorry for your loss. I'm
sorry for your loss. I'm sorry for your loss. ..." until `max_new_tokens` (docs/world.md). The
released demo has no repetition penalty, and a penalty would change every token's probability; this
changes none. It only ends the reply before the first sentence that says an earlier one again (or
after the third of a symbol it keeps repeating, "🌟🌟🌟🌟..."), and holds back a sentence in
progress while it could still be such a repeat, so a streamed reply only grows and never shows
words that the end takes back. A loop inside a sentence ("The receptionist said the receptionist
said the receptionist said ...", from the bundled model on a held-out clip) ends the same way, after
the phrase's first time (`phrase_loop`).
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? or an ellipsis with a space after it ("3.5" and "e.g.x" do not end one).
_END = re.compile(r"[.!?…]+(?=\s)")
# An emoji or other non-ASCII symbol, "!" or "?", four times in a row: the fourth starts a loop.
# ASCII marks such as "...." or "----" are left alone: text and markdown use them.
SYMBOL_RUN = 3
_RUN = re.compile(r"([^\x00-\x7f\w\s]|[!?])\1{" + str(SYMBOL_RUN) + ",}")


# A phrase of up to this many words said over and over with no sentence end between is a loop.
MAX_PHRASE = 16
_WORD = re.compile(r"\S+")


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


def _words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, key) of each word; the key ignores case and punctuation ("Said," is "said")."""
    spans = []
    for m in _WORD.finditer(text):
        key = re.sub(r"[^\w']", "", m.group().lower()) or m.group()
        spans.append((m.start(), m.end(), key))
    return spans


def phrase_loop(text: str) -> tuple[int, int | None]:
    """Where a loop of words ends what to show: (cut, hold). `cut` is the end of a phrase's first
    time once it has been said twice and begun a third time in a row (four times for one word: "no
    no no" is speech, "no no no no" a loop); len(text) when there is none. `hold` is where the last
    words begin to say earlier ones again, so they may yet become a loop (None: they do not); the
    last word is compared as a prefix while it may still grow."""
    words = _words(text)
    keys = [k for _, _, k in words]
    # The last word may still grow while no space or end mark follows it ("recep" -> "receptionist").
    growing = bool(words) and words[-1][1] == len(text) and (text[-1].isalnum() or text[-1] == "'")
    cut, hold = len(text), None
    for n in range(1, min(MAX_PHRASE, len(keys) - 1) + 1):
        run = 0  # how many words in a row so far are the word n before them
        for k in range(n, len(keys)):
            last = growing and k == len(keys) - 1
            same = keys[k - n].startswith(keys[k]) if last else keys[k] == keys[k - n]
            run = run + 1 if same else 0
            if run >= max(n + 1, 3) and not last:
                cut = min(cut, words[k - run][1])  # the run repeats the n words before it: keep those
                break
        else:  # no loop of n words: does a run reach the end?
            if run and (hold is None or words[len(keys) - run][0] < hold):
                hold = words[len(keys) - run][0]
    return cut, hold


def cut_repeats(text: str, final: bool = False) -> tuple[str, bool]:
    """`text` up to its first repeat: (what to show, whether to stop: a whole sentence said again,
    a phrase looping (`phrase_loop`), or a symbol's fourth time in a row).

    The last sentence, with no space after it yet, may still be growing: it is held back (left out)
    while it is the start of an earlier sentence, and shown once it differs; so are the last words
    while they say earlier ones again. At the end of a reply (`final`) those words are shown, but a
    last sentence that only said an earlier one again (or began to) is dropped.
    """
    if run := _RUN.search(text):
        text, looped = text[: run.start() + SYMBOL_RUN], True
    else:
        looped = False
    text, repeated = _cut_sentences(text)
    cut, hold = phrase_loop(text)
    if cut < len(text):
        return text[:cut].rstrip(",;: "), True
    if hold is not None and not final:
        text = text[:hold].rstrip()
    return text, looped or repeated


def _cut_sentences(text: str) -> tuple[str, bool]:
    seen: set[str] = set()
    for start, end, complete in sentences(text):
        key = _key(text[start:end])
        if complete and key in seen:
            return text[:start].rstrip(), True
        if not complete and any(earlier.startswith(key) for earlier in seen):
            return text[:start].rstrip(), False
        seen.add(key)
    return text, False
