"""Decoding the replies of concurrent visitors together: one LLM forward per step for all of them.

At demo scale a decode step is interpreter and kernel-launch overhead, not arithmetic (docs/performance.md), and two replies decoded in two threads also fight over the GIL; so a step for eight
replies costs little more than a step for one. `DecodeBatcher` runs one worker thread per LLM that
steps every active reply at once (continuous batching: a reply joins at the next step after its
prefill and leaves when it ends). Prefills stay in the callers' threads (they differ per system:
speech, LoRA scope, text), and every reply keeps its own `TokenSampler`. A reply that starts while
no other runs decodes in its caller's thread, as `generation.decode` does, and moves to the worker
after its next step once another reply comes: a lone reply does not pay a hand-over between
threads for every token.

Rows of different lengths share a batch by left padding: each row's keys and values are padded on
the left to the longest, the attention mask hides the padding and each row gets its own positions,
so a row sees exactly its own past. A reply alone in the batch runs on its own cache, unpadded:
exactly `generation.decode`. The batch is rebuilt only when a reply joins or leaves; then each
row's new keys and values are appended to its own cache, which the caller's `on_done` stores.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from blsp_emo.decoding.decode_step import Step, decode_step
from blsp_emo.decoding.generation import GenerationOptions, TokenSampler

_END = object()  # the worker's last message to a reply's queue


@dataclass(eq=False)
class _Reply:
    """One reply being decoded: what the worker reads and writes for it."""

    logits: torch.Tensor  # (1, V): the logits its next token is picked from
    cache: DynamicCache  # its own keys and values (synced with the batch at every rebuild)
    sampler: TokenSampler
    out: queue.Queue = field(default_factory=queue.Queue)  # tokens, then _END or an exception
    abandoned: threading.Event = field(default_factory=threading.Event)
    token: torch.Tensor | None = None  # (1, 1): the token to feed at the next forward
    queued: bool = False  # given to the worker (else decoding in its caller's thread)
    join: bool = False  # set while decoding alone: another reply came, go to the worker


class _Batch:
    """The rows stepped together, and the cache they are stepped on."""

    def __init__(self, rows: list[_Reply], config):
        self.rows = rows
        self.steps = 0  # forwards since the batch was built
        if len(rows) == 1:  # alone: its own cache, no padding, the computation of `decode`
            self.cache, self.lengths, self.mask = rows[0].cache, None, None
            return
        lengths = [row.cache.get_seq_length() for row in rows]
        self.width = max(lengths)
        self.lengths = torch.tensor(lengths, device=rows[0].logits.device)
        data = []
        for layer in range(len(rows[0].cache.layers)):
            keys = [_left_pad(row.cache.layers[layer].keys, self.width) for row in rows]
            values = [_left_pad(row.cache.layers[layer].values, self.width) for row in rows]
            data.append((torch.cat(keys), torch.cat(values)))
        self.cache = DynamicCache(ddp_cache_data=data, config=config)
        positions = torch.arange(self.width, device=self.lengths.device)
        self.mask = (positions[None, :] >= (self.width - self.lengths)[:, None]).long()

    def forward(self, step: Step) -> torch.Tensor:
        """Feed every row its token; returns the next logits, (B, V)."""
        tokens = torch.cat([row.token for row in self.rows])
        if self.mask is None:
            logits = step(tokens, self.cache)
        else:
            ones = self.mask.new_ones((len(self.rows), self.steps + 1))
            logits = step(tokens, self.cache, (self.lengths + self.steps)[:, None], torch.cat([self.mask, ones], dim=1))
        self.steps += 1
        return logits

    def sync(self) -> None:
        """Append what each row gained in this batch to its own cache."""
        if self.mask is None or self.steps == 0:
            return  # alone, the row's own cache was stepped in place
        for layer, batched in enumerate(self.cache.layers):
            keys, values = batched.keys[:, :, self.width :], batched.values[:, :, self.width :]
            for r, row in enumerate(self.rows):
                row.cache.update(keys[r : r + 1], values[r : r + 1], layer)


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[-2]
    if missing == 0:
        return tensor
    pad = tensor.new_zeros((*tensor.shape[:-2], missing, tensor.shape[-1]))
    return torch.cat([pad, tensor], dim=-2)


class DecodeBatcher:
    """Decodes the replies on `llm` that run at once in one worker thread, all in one forward per step;
    a reply that runs alone decodes in its caller's thread.

    `decode` has the contract of `generation.decode` (a `Decoder`): tokens one at a time, and once
    exhausted the cache holds the reply's keys and values too; a reply abandoned midway is dropped
    at the next step. At most `max_batch` replies are stepped at once; later ones wait their turn.
    """

    def __init__(self, llm, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.llm, self.max_batch = llm, max_batch
        self.step = decode_step(llm)
        self._incoming: queue.Queue[_Reply | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._alone: _Reply | None = None  # the reply decoding in its caller's thread, if any
        self._queued = 0  # replies given to the worker and not yet over
        self.largest_batch = 0  # the most replies one forward has stepped (for tests and the bench)

    def decode(
        self, logits: torch.Tensor, cache: DynamicCache, options: GenerationOptions, stop_ids: frozenset[int], seed: int
    ) -> Iterator[int]:
        reply = _Reply(logits, cache, TokenSampler(options, stop_ids, seed, logits.device))
        with self._lock:
            alone = self._alone is None and self._queued == 0
            if alone:
                self._alone = reply
                self.largest_batch = max(self.largest_batch, 1)
            else:
                self._queue(reply)
        try:
            if alone and (yield from self._decode_alone(reply)):
                return
            while (item := reply.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"decoding failed: {item}") from item
                yield item
        finally:
            reply.abandoned.set()
            with self._lock:
                if self._alone is reply:
                    self._alone = None
                elif reply.queued:
                    self._queued -= 1

    @torch.inference_mode()  # around every resumption: a consumer may resume it from another thread
    def _decode_alone(self, reply: _Reply) -> Iterator[int]:
        """Decode `reply` in this thread while no other reply runs; True once it is over, False when it
        was handed to the worker because another reply came.

        Alone, the worker would compute exactly this, plus a hand-over between two threads for every
        token, which on busy cores waits for the OS to run the other thread (docs/serving.md); the
        worker starts when a second reply comes.
        """
        try:
            while (token := reply.sampler.pick(reply.logits)) is not None:
                yield int(token)
                reply.logits = self.step(token, reply.cache)
                if reply.join:  # another reply is waiting in the worker: step with it from now on
                    with self._lock:
                        self._alone = None
                        self._queue(reply)
                    return False
        except Exception as e:  # the same error a reply in the worker gets
            raise RuntimeError(f"decoding failed: {e}") from e
        return True

    def _queue(self, reply: _Reply) -> None:
        """Give `reply` to the worker (the caller holds the lock); a reply decoding alone joins it."""
        reply.queued = True
        self._queued += 1
        if self._alone is not None:
            self._alone.join = True
        self._start_locked().put(reply)

    __call__ = decode

    def close(self) -> None:
        """Stop the worker once the replies in flight are done (a later `decode` starts a new one)."""
        with self._lock:
            worker, incoming = self._worker, self._incoming
            self._worker, self._incoming = None, queue.Queue()  # a new worker gets a queue of its own
        if worker is not None:
            incoming.put(None)
            worker.join()

    def _start_locked(self) -> queue.Queue:
        """The running worker's queue, starting a worker if none is alive (the caller holds the lock)."""
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(
                target=self._run, args=(self._incoming,), name="decode-batcher", daemon=True
            )
            self._worker.start()
        return self._incoming

    def _run(self, incoming: queue.Queue) -> None:
        active: list[_Reply] = []
        batch: _Batch | None = None
        closing = False
        with torch.inference_mode():
            # After `close`, replies that got this queue just before it was swapped are still served.
            while active or not closing or not incoming.empty():
                closing |= self._take(incoming, active, block=not active and not closing)
                try:
                    batch = self._step(active, batch)
                except Exception as e:  # noqa: BLE001 - every waiting reply must hear of it
                    for reply in active:
                        reply.out.put(e)
                    active, batch = [], None
                active[:] = batch.rows if batch is not None else []

    def _take(self, incoming: queue.Queue, active: list[_Reply], block: bool) -> bool:
        """Move waiting replies into `active`; True when `close` asked the worker to stop."""
        while len(active) < self.max_batch:
            try:
                reply = incoming.get(block=block)
            except queue.Empty:
                return False
            if reply is None:
                return True
            active.append(reply)
            block = False
        return False

    def _step(self, active: list[_Reply], batch: _Batch | None) -> _Batch | None:
        """Pick each reply's next token, rebuild the batch if one joined or left, run one forward."""
        going = []
        for reply in active:
            token = None if reply.abandoned.is_set() else reply.sampler.pick(reply.logits)
            if token is not None:
                reply.out.put(int(token))
                reply.token = token
                going.append(reply)
        if batch is None or going != batch.rows:
            if batch is not None:
                batch.sync()
            batch = _Batch(going, self.llm.config) if going else None
        for reply in active:
            if reply not in going:  # over, or had no token left when it came (then no rebuild is due)
                reply.out.put(_END)  # after the sync: its cache now holds the whole reply
        if batch is None:
            return None
        self.largest_batch = max(self.largest_batch, len(going))
        for reply, logits in zip(going, batch.forward(self.step).split(1)):
            reply.logits = logits
        return batch
