"""Token-by-token decoding after a prefill, so the UI can stream and the prefill can differ per system.

BLSP-Emo's audio-scoped LoRA must touch the prefill only; owning the loop makes that explicit:
the caller runs the prefill (inside the LoRA scope), this module continues with the base weights.
Sampling uses transformers' logits processors rather than hand-written ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Protocol

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from blsp_emo.decoding.decode_step import decode_step
from blsp_emo.options import GenerationOptions


def _processors(options: GenerationOptions, stop_ids: frozenset[int]) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if options.min_new_tokens > 0 and stop_ids:
        procs.append(MinLengthLogitsProcessor(options.min_new_tokens, sorted(stop_ids)))
    if options.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
    if not options.greedy:
        if options.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(options.temperature))
        if options.top_k > 0:
            procs.append(TopKLogitsWarper(options.top_k))
        if options.top_p < 1.0:
            procs.append(TopPLogitsWarper(options.top_p))
    return procs


def new_cache(llm) -> DynamicCache:
    return DynamicCache(config=llm.config)


class TokenSampler:
    """Picks one reply's tokens from the logits that follow each: its own processors, history and RNG.

    `pick` returns the next token as a (1, 1) tensor, or None once the reply is over (a stop token,
    which is not returned, or `options.max_new_tokens` tokens). Both `decode` and `DecodeBatcher`
    (batching.py) use it, so the sampling rules and the seed's draws are the same however a reply is
    scheduled; a batched row's logits can differ from its logits alone by rounding (other matmul
    shapes), which in bfloat16 can flip a near tie.
    """

    def __init__(self, options: GenerationOptions, stop_ids: frozenset[int], seed: int, device: torch.device):
        self.options, self.stop_ids = options, stop_ids
        self.processors = _processors(options, stop_ids)
        # Once `min_new_tokens` are out the min-length processor changes nothing, yet costs a step's
        # worth of small tensor ops per token at demo scale; the rest apply to every token.
        self.steady = [p for p in self.processors if not isinstance(p, MinLengthLogitsProcessor)]
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.history = torch.empty((1, 0), dtype=torch.long, device=device)

    def pick(self, logits: torch.Tensor) -> torch.Tensor | None:
        if self.history.shape[1] >= self.options.max_new_tokens:
            return None
        # Each processor called directly: `LogitsProcessorList.__call__` inspects every processor's
        # signature on every call, which here costs more than the processors themselves.
        scores = logits.float()
        for processor in self.processors if self.history.shape[1] < self.options.min_new_tokens else self.steady:
            scores = processor(self.history, scores)
        if self.options.greedy:
            token = scores.argmax(-1, keepdim=True)
        else:
            token = torch.multinomial(scores.softmax(-1), 1, generator=self.generator)
        if int(token) in self.stop_ids:
            return None
        self.history = torch.cat([self.history, token], dim=1)
        return token


class Decoder(Protocol):
    """What continues a reply after the prefill: `decode` bound to an LLM, or `DecodeBatcher.decode`."""

    def __call__(
        self, logits: torch.Tensor, cache: DynamicCache, options: GenerationOptions, stop_ids: frozenset[int], seed: int
    ) -> Iterator[int]: ...


@torch.inference_mode()
def decode(
    llm,
    logits: torch.Tensor,
    cache: DynamicCache,
    options: GenerationOptions,
    stop_ids: frozenset[int],
    seed: int,
) -> Iterator[int]:
    """Yield reply token ids one at a time, starting from the prefill's last logits (1, V).

    Stops after a stop token (not yielded) or `options.max_new_tokens` tokens. Once exhausted,
    `cache` holds the keys and values of every yielded token too.
    """
    sampler, step = TokenSampler(options, stop_ids, seed, logits.device), decode_step(llm)
    while (token := sampler.pick(logits)) is not None:
        yield int(token)
        logits = step(token, cache)


def single_decoder(llm) -> Decoder:
    """`decode` on `llm`, in the caller's thread: one reply at a time."""
    return partial(decode, llm)
