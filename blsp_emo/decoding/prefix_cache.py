"""Reusing the LLM's key/value cache across the turns of a conversation.

A system stays stateless (history is an argument), so the cache is keyed by content, not by session:
after a reply, the keys and values of prompt + reply are stored under the token ids and the digests
of the clips that filled the speech positions. The next turn's prompt starts with that same sequence,
so only the new part (the end of the reply, the new user turn) is run through the LLM, and only clips
not already covered are encoded. Two visitors can only share an entry whose contents are identical
(e.g. the system prompt), and then the keys and values are the ones each would have computed.

Stored tensors are never written again (transformers' DynamicLayer grows by concatenation, which
makes new tensors), so entries are shared by threads without copying; a hit builds a new cache from
views of them. The store is an LRU bounded in bytes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache


def clip_digest(clip: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(clip).tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class TokenSequence:
    """What a cache holds the keys and values of: token ids, and the clip filling each speech span."""

    ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]  # [start, end) positions of each clip's speech embeddings
    clips: tuple[bytes, ...]  # digest of each span's clip

    @classmethod
    def of(cls, ids: Sequence[int], speech_mask: Sequence[bool], clips: Sequence[np.ndarray]) -> TokenSequence:
        spans, start = [], None
        for i, is_speech in enumerate([*speech_mask, False]):
            if is_speech and start is None:
                start = i
            elif not is_speech and start is not None:
                spans.append((start, i))
                start = None
        # Adjacent slots would merge into one span; prompts always separate clips with text.
        if len(spans) != len(clips):
            raise ValueError(f"{len(spans)} speech spans for {len(clips)} clips")
        return cls(tuple(ids), tuple(spans), tuple(clip_digest(c) for c in clips))

    def extended(self, ids: Sequence[int]) -> TokenSequence:
        return TokenSequence(self.ids + tuple(ids), self.spans, self.clips)

    def common_prefix(self, other: TokenSequence) -> int:
        """How many leading positions hold the same tokens and the same speech in both."""
        n = _common_length(self.ids, other.ids)
        for k, (start, _end) in enumerate(self.spans):
            if start >= n:
                break
            if k >= len(other.spans) or other.spans[k][0] != start or other.clips[k] != self.clips[k]:
                return start  # a different clip (or one longer or shorter) from here on
        return n


def _common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the common prefix: a binary search over tuple-slice comparisons, which run in C."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class _Entry:
    sequence: TokenSequence
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    nbytes: int


class PrefixCache:
    """LRU of past (sequence, keys/values); `lookup` returns the longest reusable prefix."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[TokenSequence, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def lookup(self, wanted: TokenSequence, config) -> tuple[int, DynamicCache | None]:
        """(n, cache of the first n positions); n < len(wanted.ids), so a forward always remains."""
        with self._lock:
            best, best_n = None, 0
            for entry in self._entries.values():
                n = min(wanted.common_prefix(entry.sequence), len(wanted.ids) - 1)
                if n > best_n:
                    best, best_n = entry, n
            if best is None:
                self.misses += 1
                return 0, None
            self._entries.move_to_end(best.sequence)
            self.hits += 1
        data = [(k[..., :best_n, :], v[..., :best_n, :]) for k, v in best.layers]
        return best_n, DynamicCache(ddp_cache_data=data, config=config)

    def store(self, sequence: TokenSequence, cache: DynamicCache) -> None:
        # The decode step's keys are views of buffers with room to grow (decode_step._append): an
        # entry keeps its own compact copy, so that the bytes counted are the bytes held.
        if any(layer.keys.shape[-2] != len(sequence.ids) or layer.keys.shape[0] != 1 for layer in cache.layers):
            return  # not one row covering exactly this sequence: nothing safe to store
        nbytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        if nbytes > self.max_bytes:
            return  # before any copy is made
        layers = tuple((_compact(layer.keys), _compact(layer.values)) for layer in cache.layers)
        with self._lock:
            old = self._entries.pop(sequence, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[sequence] = _Entry(sequence, layers, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole else tensor.clone()


def remember(
    store: PrefixCache | None, sequence: TokenSequence, generate: Callable[[Callable | None], Iterator[int]]
) -> Iterator[int]:
    """Yield the tokens of `generate(on_done)`; once the reply is complete, store prompt + reply."""
    ids: list[int] = []

    def on_done(cache: DynamicCache) -> None:
        store.store(sequence.extended(ids), cache)

    for token in generate(on_done if store is not None else None):
        ids.append(token)
        yield token
