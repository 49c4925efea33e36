"""The two decoding speed-ups for serving, each measured against what it replaced, in the same run.

- **Decode step**: milliseconds per token of transformers' forward and of `Qwen2DecodeStep`, on
  the same LLM and the same cache length, interleaved repeat by repeat.
- **Concurrent replies**: N visitors' replies started at once from N threads, each decoded in its
  own thread (one forward per reply and token) or by one `DecodeBatcher` (one forward per token for
  all), interleaved repeat by repeat; the wall time until all N are done and the median reply.
- **Garbage collection**: a full collection with the systems loaded, as the app's model workers
  ran it before they froze what they had loaded (`workers.freeze_loaded`), and after.
"""

from __future__ import annotations

import copy
import gc
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from blsp_emo.decoding.batching import DecodeBatcher
from blsp_emo.decoding.decode_step import Qwen2DecodeStep
from blsp_emo.decoding.generation import GenerationOptions, new_cache, single_decoder
from blsp_emo.serving.workers import freeze_loaded
from blsp_emo.systems import SpokenDialogueSystem


@dataclass(frozen=True)
class StepResult:
    context: int  # cached positions the step attends to
    transformers_ms: float
    lean_ms: float | None  # None where the LLM is not a Qwen2 the lean step supports

    @property
    def speedup(self) -> float | None:
        return None if self.lean_ms is None else self.transformers_ms / self.lean_ms


@dataclass(frozen=True)
class ConcurrentResult:
    system: str
    replies: int
    clip_s: float
    threads_wall_s: float  # all N replies done, each decoded in its own thread
    batched_wall_s: float  # ... decoded together by one DecodeBatcher
    threads_reply_s: float  # median reply total
    batched_reply_s: float
    largest_batch: int
    same_tokens: bool  # every batched reply equals its one-at-a-time reply


@dataclass(frozen=True)
class CollectionResult:
    tracked: int  # objects the cyclic collector tracks once the systems are loaded
    full_ms: float  # median full collection (a pause: it holds the GIL throughout)
    frozen_full_ms: float  # ... after freeze_loaded, as in a serving worker
    frozen_tracked: int


def measure_collection(repeats: int = 5) -> CollectionResult:
    """Median full-collection pause over `repeats`, before and after `freeze_loaded` (undone after)."""

    def pause() -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            gc.collect()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    tracked, full = len(gc.get_objects()), pause()
    freeze_loaded()
    try:
        return CollectionResult(tracked, full, pause(), len(gc.get_objects()))
    finally:
        gc.unfreeze()


@torch.inference_mode()
def measure_step(llm, context: int = 128, tokens: int = 64, repeats: int = 5) -> StepResult:
    """Medians over `repeats` of the mean per-token time of `tokens` steps from a `context`-long cache."""
    lean = Qwen2DecodeStep(llm) if Qwen2DecodeStep.supports(llm) else None
    device = llm.device
    prompt = torch.arange(context, device=device)[None] % llm.config.vocab_size
    token = torch.ones((1, 1), dtype=torch.long, device=device)

    def per_token(step) -> float:
        cache = new_cache(llm)
        llm(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        _sync(device)
        start = time.perf_counter()
        for _ in range(tokens):
            step(cache)
        _sync(device)
        return (time.perf_counter() - start) / tokens

    paths = {"transformers": lambda cache: llm(input_ids=token, past_key_values=cache, use_cache=True).logits}
    if lean is not None:
        paths["lean"] = lambda cache: lean(token, cache)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(repeats + 1):  # the first round warms up
        for name, step in paths.items():
            seconds = per_token(step)
            if i:
                times[name].append(seconds)
    ms = {name: round(statistics.median(t) * 1e3, 3) for name, t in times.items()}
    return StepResult(context, ms["transformers"], ms.get("lean"))


def measure_concurrent(
    system: SpokenDialogueSystem, clips: list[np.ndarray], clip_s: float, options: GenerationOptions, repeats: int = 3
) -> ConcurrentResult:
    """`len(clips)` replies at once, per-thread decoding vs one batcher, interleaved over `repeats`."""
    llm = _llm(system)
    batcher = DecodeBatcher(llm, max_batch=len(clips))
    variants = {"threads": _with_decoder(system, single_decoder(llm)), "batched": _with_decoder(system, batcher)}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    replies: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, list] = {}
    try:
        for i in range(repeats + 1):  # the first round warms up
            for name, variant in variants.items():
                wall, done = _at_once(variant, clips, options)
                tokens[name] = [r.token_ids for r in done]
                if i:
                    walls[name].append(wall)
                    replies[name].extend(r.timings.total_s for r in done)
    finally:
        batcher.close()
    med = {name: statistics.median(v) for name, v in walls.items()}
    reply = {name: statistics.median(v) for name, v in replies.items()}
    return ConcurrentResult(
        system.name,
        len(clips),
        clip_s,
        med["threads"],
        med["batched"],
        reply["threads"],
        reply["batched"],
        batcher.largest_batch,
        tokens["threads"] == tokens["batched"],
    )


def _at_once(system: SpokenDialogueSystem, clips: list[np.ndarray], options: GenerationOptions):
    out = [None] * len(clips)
    barrier = threading.Barrier(len(clips) + 1)

    def visitor(i: int) -> None:
        barrier.wait()
        out[i] = system.respond(clips[i], options=options)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if any(r is None for r in out):
        raise RuntimeError(f"{system.name}: a concurrent reply failed (see the thread's traceback above)")
    return wall, out


def _with_decoder(system: SpokenDialogueSystem, decoder) -> SpokenDialogueSystem:
    """A shallow copy that decodes with `decoder` and caches no prefix (every run does the same work)."""
    other = copy.copy(system)
    other.decoder, other.prefix_cache = decoder, None
    return other


def _llm(system: SpokenDialogueSystem):
    model = getattr(system, "model", None)
    return model.llm if model is not None else system.llm


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def to_json(step: StepResult | None, concurrent: ConcurrentResult | None, collection: CollectionResult) -> dict:
    return {
        "decode_step": None if step is None else {**asdict(step), "speedup": step.speedup},
        "concurrent": None if concurrent is None else asdict(concurrent),
        "collection": asdict(collection),
    }


def format_serving(
    step: StepResult | None, concurrent: ConcurrentResult | None, collection: CollectionResult
) -> Iterator[str]:
    yield ""
    yield (
        f"full garbage collection, systems loaded: {collection.full_ms:.1f} ms over {collection.tracked:,} tracked "
        f"objects; after freeze_loaded (as a model worker serves): {collection.frozen_full_ms:.3f} ms over "
        f"{collection.frozen_tracked:,}"
    )
    if step is not None:
        lean = (
            "n/a (not a Qwen2 it supports)"
            if step.lean_ms is None
            else f"{step.lean_ms:.3f} ms with Qwen2DecodeStep ({step.speedup:.2f}x faster)"
        )
        yield ""
        yield (
            f"decode step, {step.context} cached positions: {step.transformers_ms:.3f} ms a token through "
            f"transformers' forward, {lean}"
        )
    if concurrent is not None:
        c = concurrent
        yield ""
        yield f"{c.replies} `{c.system}` replies at once ({c.clip_s:g} s clips), medians:"
        yield "| decoding | all done ms | one reply ms |"
        yield "|---|---|---|"
        yield f"| each in its own thread | {c.threads_wall_s * 1e3:.1f} | {c.threads_reply_s * 1e3:.1f} |"
        yield f"| one DecodeBatcher | {c.batched_wall_s * 1e3:.1f} | {c.batched_reply_s * 1e3:.1f} |"
        yield (
            f"batched / threads: all done {c.batched_wall_s / c.threads_wall_s:.2f}, one reply "
            f"{c.batched_reply_s / c.threads_reply_s:.2f}; largest batch {c.largest_batch}; "
            f"same tokens: {'yes' if c.same_tokens else 'NO'}"
        )
