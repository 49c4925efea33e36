"""The fit loop of stage-0 speech pretraining (`pretrain_speech.py`): one loop for ASR and SER.

AdamW with warmup + linear decay over length-bucketed batches of a `speech_corpus.Corpus`; the
model's loss comes as a function (`BatchLoss`), so the CTC recogniser and the emotion classifier
share it, as they share `predict` for held-out scores.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from blsp_emo.audio import FRAMES_PER_SECOND
from train.demo_world.speech_corpus import Corpus, collate, length_batches, perturb, spec_augment
from train.schedule import warmup_decay

BETAS, EPS = (0.9, 0.98), 1e-8  # beta2 0.98 as in Whisper's and most CTC recipes' AdamW


@dataclass(frozen=True)
class FitOptions:
    epochs: int = 4
    batch_seconds: float = 30.0  # audio per batch, padding included
    lr: float = 2e-3  # peak of warmup + linear decay
    warmup: float = 0.1  # share of the steps spent warming up
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    spec_augment: bool = True  # two frequency and two time masks per clip (SpecAugment, LD-like)
    warp: float = 0.0  # formants scaled by up to 1 +- warp per clip (VTLP): new voices from the known ones
    stretch: float = 0.0  # tempo scaled by up to 1 +- stretch per clip
    seed: int = 0
    log_steps: int = 25

    def __post_init__(self):
        if self.epochs < 1 or self.batch_seconds <= 0 or self.lr <= 0 or not 0 <= self.warmup < 1:
            raise ValueError(f"{self}: need epochs >= 1, batch_seconds > 0, lr > 0 and 0 <= warmup < 1")


# --- training -----------------------------------------------------------------------------------

BatchLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


@dataclass(frozen=True)
class FitReport:
    steps: int
    epochs: int
    seconds: float  # wall clock of the training loop
    cpu_seconds: float  # this process's CPU time: on a busy machine, what a free one would take per thread
    padding: float  # share of batch frames that were padding


def fit(
    model: torch.nn.Module,
    corpus: Corpus,
    loss_fn: BatchLoss,
    options: FitOptions,
    name: str,
    after_epoch: Callable[[int, torch.nn.Module], None] | None = None,
) -> FitReport:
    """AdamW with warmup + linear decay over `options.epochs` passes of length-bucketed batches;
    `after_epoch(epoch, model)` (e.g. a held-out score) runs after each pass, in eval mode."""
    accelerator = Accelerator()
    set_seed(options.seed)
    rng, generator = random.Random(options.seed), torch.Generator().manual_seed(options.seed)
    plan = [
        length_batches(corpus.frames, int(options.batch_seconds * FRAMES_PER_SECOND), rng)
        for _ in range(options.epochs)
    ]
    total = sum(map(len, plan))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, betas=BETAS, eps=EPS, weight_decay=options.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = warmup_decay(optimizer, int(options.warmup * total), total, "linear")
    padding = 1 - sum(corpus.frames) / sum(len(b) * max(corpus.frames[i] for i in b) for b in plan[0])
    tqdm.write(f"{name}: {total} steps, {options.epochs} epochs of {len(plan[0])} batches, padding {padding:.1%}")
    start, cpu, step, losses = time.perf_counter(), time.process_time(), 0, []
    model.train()
    for epoch, batches in enumerate(plan):
        for batch in tqdm(batches, desc=f"{name} epoch {epoch + 1}", disable=None, leave=False):
            features, counts = training_batch(corpus, batch, options, generator)
            loss = loss_fn(model, features.to(accelerator.device), counts.to(accelerator.device), batch)
            accelerator.backward(loss)
            norm = accelerator.clip_grad_norm_(params, options.max_grad_norm)
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step, losses = step + 1, losses + [float(loss.detach())]
            if step % options.log_steps == 0 or step == total:
                tqdm.write(
                    f"{name} step {step}/{total} | epoch {epoch + 1} | loss {sum(losses) / len(losses):.4f} | "
                    f"lr {lr:.2e} | grad_norm {float(norm):.3f} | {(time.perf_counter() - start) / step:.2f} s/step"
                )
                losses = []
        if after_epoch is not None:
            after_epoch(epoch + 1, accelerator.unwrap_model(model).eval())
            model.train()
    accelerator.unwrap_model(model).eval()
    return FitReport(
        total,
        options.epochs,
        round(time.perf_counter() - start, 1),
        round(time.process_time() - cpu, 1),
        round(padding, 4),
    )


def training_batch(corpus: Corpus, batch: list[int], options: FitOptions, generator: torch.Generator):
    """The clips of `batch`, perturbed, padded and masked as `options` say: (N, n_mels, T), (N,)."""
    clips = [corpus.features[i] for i in batch]
    if options.warp or options.stretch:
        clips = [perturb(f, options.warp, options.stretch, generator) for f in clips]
    features, counts = collate(clips)
    return (spec_augment(features, counts, generator) if options.spec_augment else features), counts


@torch.inference_mode()
def predict(model: torch.nn.Module, corpus: Corpus, batch_seconds: float, decode: Callable) -> list:
    """`decode(model, features, counts)` over length-bucketed batches, returned in corpus order."""
    model.eval()
    out: list = [None] * len(corpus.features)
    device = next(model.parameters()).device
    for batch in length_batches(corpus.frames, int(batch_seconds * FRAMES_PER_SECOND), random.Random(0)):
        features, counts = collate([corpus.features[i] for i in batch])
        for i, result in zip(batch, decode(model, features.to(device), counts.to(device))):
            out[i] = result
    return out
