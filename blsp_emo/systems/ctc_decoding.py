"""Transcripts from CTC character scores, held to a lexicon and weighed by a word bigram LM.

Greedy CTC spells what it hears letter by letter ("the maeteng starts"); an ASR system is normally
decoded with a language model instead (wav2vec 2.0 with KenLM, Whisper with its own decoder). Here the
LM is an interpolated Kneser-Ney bigram over the words of the ASR training transcripts, saved beside
the model as `word_lm.json`, and the search is a CTC prefix beam search that only spells lexicon words.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORD_LM_FILE = "word_lm.json"
START, END = "<s>", "</s>"
NEG_INF = float("-inf")


@dataclass(frozen=True)
class WordBigramLM:
    """P(word | previous word), interpolated Kneser-Ney with absolute discount `discount`."""

    bigrams: dict[str, dict[str, int]]  # previous -> next -> count; sentences run START ... END
    discount: float = 0.75
    _continuation: dict[str, float] = field(init=False, repr=False, compare=False)
    _totals: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        predecessors = Counter(word for following in self.bigrams.values() for word in following)
        types = sum(predecessors.values())
        vocabulary = self.vocabulary | {END}
        # Add-one over the vocabulary so a word seen only after START still has some continuation mass.
        continuation = {w: (predecessors[w] + 1) / (types + len(vocabulary)) for w in vocabulary}
        object.__setattr__(self, "_continuation", continuation)
        object.__setattr__(self, "_totals", {v: (sum(f.values()), len(f)) for v, f in self.bigrams.items()})

    @classmethod
    def from_texts(cls, texts: Iterable[str], discount: float = 0.75) -> WordBigramLM:
        bigrams: dict[str, Counter] = defaultdict(Counter)
        for text in texts:
            words = [START, *text.split(), END]
            for previous, word in zip(words, words[1:]):
                bigrams[previous][word] += 1
        if not bigrams:
            raise ValueError("no transcripts to build a word LM from; pass the ASR training texts")
        return cls({v: dict(f) for v, f in bigrams.items()}, discount)

    @classmethod
    def load(cls, path: str | Path) -> WordBigramLM:
        data = json.loads(Path(path).read_text())
        return cls(data["bigrams"], data["discount"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"discount": self.discount, "bigrams": self.bigrams}))

    @property
    def vocabulary(self) -> set[str]:
        return {w for following in self.bigrams.values() for w in following if w != END}

    def log_prob(self, previous: str, word: str) -> float:
        continuation = self._continuation.get(word)
        if continuation is None:
            return NEG_INF  # outside the lexicon: the decoder never spells such words
        total, kinds = self._totals.get(previous, (0, 0))
        if total == 0:
            return math.log(continuation)
        seen = max(self.bigrams[previous].get(word, 0) - self.discount, 0.0) / total
        return math.log(seen + self.discount * kinds / total * continuation)


@dataclass(frozen=True)
class BeamOptions:
    beam: int = 16  # prefixes kept per step
    lm_weight: float = 0.5  # alpha: LM log-probability added per word (pyctcdecode's default)
    word_bonus: float = 1.0  # beta: added per word, against the LM's bias to short transcripts
    min_log_prob: float = -8.0  # characters less likely than this at a step are not tried


@dataclass
class _Prefix:
    blank: float = NEG_INF  # log P(prefix, path ends in blank)
    char: float = NEG_INF  # log P(prefix, path ends in its last character)
    lm: float = 0.0  # weighted LM score and word bonuses of its complete words
    last_word: str = START
    node: dict = None  # trie node of the word being spelled
    last: int = -1  # index of the last character (for CTC's repeat rule)

    def total(self) -> float:
        return np.logaddexp(self.blank, self.char) + self.lm


class LexiconDecoder:
    """CTC prefix beam search over `alphabet` (index 0 is blank) that spells only `lm`'s words."""

    def __init__(self, alphabet: str, lm: WordBigramLM, options: BeamOptions = BeamOptions()):
        if " " not in alphabet:
            raise ValueError(f"the alphabet {alphabet!r} has no space, so words cannot be told apart")
        self.alphabet, self.lm, self.options = alphabet, lm, options
        self.space = alphabet.index(" ") + 1
        self.trie: dict = {}
        for word in lm.vocabulary:
            if any(c not in alphabet or c == " " for c in word):
                continue  # the recogniser cannot spell it
            node = self.trie
            for c in word:
                node = node.setdefault(alphabet.index(c) + 1, {})
            node["word"] = word

    @classmethod
    def load(cls, folder: str | Path, alphabet: str, options: BeamOptions = BeamOptions()) -> LexiconDecoder | None:
        """The decoder saved beside an ASR model, or None when the folder has no word LM."""
        path = Path(folder) / WORD_LM_FILE
        return cls(alphabet, WordBigramLM.load(path), options) if path.is_file() else None

    def decode(self, log_probs: np.ndarray) -> str:
        """The best transcript for one clip's (T, 1 + |alphabet|) log-probabilities."""
        beams = {"": _Prefix(blank=0.0, node=self.trie)}
        for step in np.asarray(log_probs, dtype=np.float64):
            candidates = [c for c in np.flatnonzero(step >= self.options.min_log_prob).tolist() if c != 0]
            following: dict[str, _Prefix] = {}
            for text, prefix in beams.items():
                both = np.logaddexp(prefix.blank, prefix.char)
                stay = self._at(following, text, prefix)
                stay.blank = np.logaddexp(stay.blank, step[0] + both)
                for c in candidates:
                    if c == prefix.last:  # a repeat collapses unless a blank came between
                        stay.char = np.logaddexp(stay.char, step[c] + prefix.char)
                        self._extend(following, text, prefix, c, step[c] + prefix.blank)
                    else:
                        self._extend(following, text, prefix, c, step[c] + both)
            beams = dict(sorted(following.items(), key=lambda kv: kv[1].total(), reverse=True)[: self.options.beam])
        return self._best(beams)

    @staticmethod
    def _at(following: dict[str, _Prefix], text: str, like: _Prefix) -> _Prefix:
        if text not in following:
            following[text] = _Prefix(lm=like.lm, last_word=like.last_word, node=like.node, last=like.last)
        return following[text]

    def _extend(self, following: dict[str, _Prefix], text: str, prefix: _Prefix, c: int, log_p: float) -> None:
        if c == self.space:
            word = prefix.node.get("word")
            if word is None:
                return  # a space must end a lexicon word
            lm = prefix.lm + self._word_score(prefix.last_word, word)
            new = self._at(following, text + " ", _Prefix(lm=lm, last_word=word, node=self.trie, last=c))
        else:
            node = prefix.node.get(c)
            if node is None:
                return
            new = self._at(
                following,
                text + self.alphabet[c - 1],
                _Prefix(lm=prefix.lm, last_word=prefix.last_word, node=node, last=c),
            )
        new.char = np.logaddexp(new.char, log_p)

    def _word_score(self, previous: str, word: str) -> float:
        return self.options.lm_weight * self.lm.log_prob(previous, word) + self.options.word_bonus

    def _best(self, beams: dict[str, _Prefix]) -> str:
        finished = []
        for text, prefix in beams.items():
            score, last = prefix.total(), prefix.last_word
            if prefix.node is not self.trie:  # the last word was not followed by a space
                word = prefix.node.get("word")
                if word is None:
                    continue
                score, last = score + self._word_score(last, word), word
            finished.append((score + self.options.lm_weight * self.lm.log_prob(last, END), text))
        return " ".join(max(finished)[1].split()) if finished else ""
