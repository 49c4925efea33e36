"""The one training loop, for both stages, on `accelerate`: CPU, one GPU, DDP and DeepSpeed alike.

What changes between stages comes from the `Stage` (trainable parts, losses, prompts, numbers);
what changes between machines comes from the accelerate launcher config. The loop: AdamW over the
trainable parameters (one group, weight decay on all of them, as DeepSpeed's optimizer did in the
released runs), gradient accumulation, clipping, warmup + linear decay, a log line per
`log_steps`, a resumable checkpoint every `save_steps`, and a final model folder that
`python -m blsp_emo respond --model DIR` loads.

Layout of `output`: the final model (config.json, model.safetensors, tokenizer) at the top,
`checkpoint-{step}/` (accelerate state + trainer_state.json) for `--resume`, `log.jsonl` with one
object per log line, and `training.json` with the resolved settings and the data reports.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm

from blsp_emo.model.checkpoint import save_model
from train.data import REASONS, Batch, Collator, DataLimits, DataReport, ManifestDataset
from train.manifest import TEACHER_KEYS, count_rows
from train.schedule import WARMUP_TYPES, warmup_decay
from train.stages import Stage, apply_stage, init_model, parameter_groups, trainable_summary

BETAS, EPS = (0.9, 0.999), 1e-8  # AdamW defaults the released runs inherited (docs/paper.md §4)


@dataclass(frozen=True)
class RunConfig:
    """Where a run reads and writes, and the knobs that are not part of the method."""

    manifests: tuple[str, ...]  # teacher outputs (cleaned)
    init: str  # model folder the stage starts from
    output: str
    lora_rank: int = 16  # for a stage that adds a LoRA (docs/paper.md §1.2: r 16, alpha 16)
    max_steps: int | None = None  # None: the stage's epochs over the manifests
    log_steps: int = 20
    save_total_limit: int = 1  # checkpoints kept (released: 1)
    resume: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that has it, else no
    warmup_type: str = "log"  # see schedule.py
    limits: DataLimits = field(default_factory=DataLimits)
    shuffle: bool = True  # over the whole manifest, each epoch
    warp: float = 0.0  # speaker augmentation: each clip's mel axis scaled by 1 +- up to `warp` (VTLP)

    def __post_init__(self):
        if not 0.0 <= self.warp < 0.5:
            raise ValueError(f"warp must be in [0, 0.5) (0.1 scales formants and pitch by up to 10 %), got {self.warp}")
        if self.log_steps < 1 or self.save_total_limit < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError(
                f"log_steps, save_total_limit and max_steps must be >= 1, got {self.log_steps}, "
                f"{self.save_total_limit}, {self.max_steps}"
            )
        if self.warmup_type not in WARMUP_TYPES:
            raise ValueError(f"warmup_type must be one of {WARMUP_TYPES}, got {self.warmup_type!r}")


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # next shuffled row of this process in `epoch`
    reports: list = field(default_factory=list)  # one data report per epoch


@dataclass(frozen=True)
class Session:
    """What one run holds while it trains, so helpers take one argument instead of ten."""

    accelerator: Accelerator
    stage: Stage
    run: RunConfig
    model: torch.nn.Module  # prepared (DDP / DeepSpeed engine, or the model itself)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list
    dataset: ManifestDataset
    loader: DataLoader
    total: int  # optimizer steps of the run


def train(stage: Stage, run: RunConfig) -> Path:
    """Run `stage` as configured by `run`; returns the folder of the final model."""
    accelerator = Accelerator(
        gradient_accumulation_steps=stage.grad_accum, mixed_precision=_precision(run.mixed_precision)
    )
    rows = count_rows(run.manifests, TEACHER_KEYS)  # every line checked before a model loads
    if rows == 0:
        raise ValueError(f"no rows in {list(run.manifests)}")
    _check_output(run)
    set_seed(stage.seed)
    model, tokenizer = init_model(run.init, stage, run.lora_rank)
    params = apply_stage(model, stage)
    limits = replace(run.limits, max_seconds=min(run.limits.max_seconds, model.config.window_seconds))
    dataset = ManifestDataset(
        run.manifests,
        stage,
        tokenizer,
        limits,
        run.shuffle,
        stage.seed,
        accelerator.process_index,
        accelerator.num_processes,
    )
    # No workers: rows are decoded here so the data report sees them all. The loader gets its own
    # generator so that iterating it never draws from the global RNG that checkpoints restore.
    loader = DataLoader(
        dataset,
        stage.batch_size,
        collate_fn=Collator(stage, tokenizer, model.config, run.warp),
        generator=torch.Generator(),
    )
    total = run.max_steps or _epoch_steps(rows, stage, accelerator.num_processes)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, stage, params), lr=stage.lr, betas=BETAS, eps=EPS, weight_decay=stage.weight_decay
    )
    if accelerator.state.deepspeed_plugin is not None:  # the loader is not prepared, so say it here
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = stage.batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    # Built on the prepared optimizer: under DeepSpeed that is the engine's (CPU Adam with offload),
    # whose parameter groups are the ones that step. Stepped by hand once per optimizer step.
    scheduler = warmup_decay(optimizer, stage.warmup_steps, total, run.warmup_type)
    accelerator.register_for_checkpointing(scheduler)
    session = Session(accelerator, stage, run, model, optimizer, scheduler, params, dataset, loader, total)
    state = _resume(session) if run.resume else TrainState()
    _print(
        accelerator,
        f"{stage.name}: training {trainable_summary(accelerator.unwrap_model(model), stage)}; "
        f"{total} steps, losses {', '.join(stage.losses)}, from step {state.step}",
    )
    _train_epochs(session, state)
    return _save_final(session, tokenizer, state)


def _train_epochs(s: Session, state: TrainState) -> None:
    s.model.train()
    # disable=None: a bar on a terminal only, and only from the main process.
    bar = tqdm(
        total=s.total, initial=state.step, desc=s.stage.name, disable=None if s.accelerator.is_main_process else True
    )
    # max_steps, when given, replaces the epoch count (as in transformers' Trainer).
    while state.step < s.total and (s.run.max_steps or state.epoch < s.stage.epochs):
        s.dataset.set_epoch(state.epoch, state.position)
        batches = _run_epoch(s, state, bar)
        state.reports.append(_report(s.accelerator, s.dataset.report))
        if state.epoch == 0 or state.reports[-1]["dropped"]:  # later passes repeat the first
            _print(s.accelerator, f"epoch {state.epoch + 1} data: {json.dumps(state.reports[-1])}")
        if batches == 0 and state.position == 0:
            raise ValueError(f"no usable rows in {list(s.run.manifests)}; the data report above says why")
        if state.step < s.total:  # the epoch ran out, not the steps
            state.epoch, state.position = state.epoch + 1, 0
    bar.close()


def _run_epoch(s: Session, state: TrainState, bar: tqdm) -> int:
    """Train on the rest of the current epoch (or until `s.total` steps); returns the batches seen."""
    sums: dict[str, float] = defaultdict(float)
    micro, start, batches = 0, time.perf_counter(), 0
    for batch in _synchronized(s.loader, s.accelerator):
        batches += 1
        with s.accelerator.accumulate(s.model):
            out = s.model(batch.training, losses=s.stage.losses)
            s.accelerator.backward(out.loss)
            sync = s.accelerator.sync_gradients  # the last micro-batch of an optimizer step
            grad_norm = s.accelerator.clip_grad_norm_(s.params, s.stage.max_grad_norm) if sync else None
            s.optimizer.step()  # a no-op until `sync`
            s.optimizer.zero_grad()
        for name, value in {"loss": out.loss, **out.losses}.items():
            sums[name] += float(value.detach())
        micro += 1
        state.position = batch.next_position
        if not sync:
            continue
        lr = s.scheduler.get_last_lr()[0]  # the rate this step used
        s.scheduler.step()
        state.step += 1
        bar.update()
        if state.step % s.run.log_steps == 0 or state.step == s.total:
            seconds = (time.perf_counter() - start) / micro * s.stage.grad_accum
            _log(s, state, {k: v / micro for k, v in sums.items()}, lr, grad_norm, seconds)
            sums, micro, start = defaultdict(float), 0, time.perf_counter()
        if state.step % s.stage.save_steps == 0:
            save_checkpoint(s, state)
        if state.step >= s.total:
            break
    return batches


def _synchronized(loader: DataLoader, accelerator: Accelerator) -> Iterator[Batch]:
    """The loader's batches until any process runs out: filtering leaves processes with unequal
    row counts, and a process that stopped alone would leave the others waiting in all-reduce."""
    for batch in loader:
        if accelerator.num_processes > 1 and not _everyone(accelerator, True):
            return
        yield batch
    if accelerator.num_processes > 1:
        _everyone(accelerator, False)


def _everyone(accelerator: Accelerator, has_batch: bool) -> bool:
    flags = accelerator.gather(torch.tensor([int(has_batch)], device=accelerator.device))
    return bool(flags.min())


def _precision(choice: str) -> str:
    """auto: bf16 where the GPU has it (the released runs used bf16), else full precision.
    Under DeepSpeed this also fills the config's `"bf16": {"enabled": "auto"}`."""
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _epoch_steps(rows: int, stage: Stage, processes: int) -> int:
    """Optimizer steps of `stage.epochs` passes over `rows` manifest lines.

    Rows dropped for their audio shorten an epoch, so a run may end a little before this, with
    the learning rate not quite at zero; pass max_steps to fix the schedule exactly.
    """
    micro = math.ceil(math.ceil(rows / processes) / stage.batch_size)
    return max(1, micro * stage.epochs // stage.grad_accum)


def _print(accelerator: Accelerator, line: str) -> None:
    if accelerator.is_main_process:
        tqdm.write(line)


def _log(s: Session, state: TrainState, losses: dict, lr: float, grad_norm, seconds: float) -> None:
    """One line per log step (and one JSON object in log.jsonl): each loss, lr, grad norm, speed."""
    if not s.accelerator.is_main_process:
        return
    norm = float(grad_norm) if grad_norm is not None else None  # None under DeepSpeed, which clips itself
    record = {
        "step": state.step,
        "epoch": state.epoch + 1,
        **losses,
        "lr": lr,
        "grad_norm": norm,
        "s_per_step": seconds,
    }
    parts = [f"step {state.step}/{s.total}", *(f"{k} {v:.4f}" for k, v in losses.items()), f"lr {lr:.2e}"]
    parts += [f"grad_norm {norm:.3f}"] if norm is not None else []
    tqdm.write(" | ".join(parts + [f"{seconds:.2f} s/step"]))
    with open(Path(s.run.output) / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _report(accelerator: Accelerator, report: DataReport) -> dict:
    """This epoch's data report, counts summed over processes; examples from the main one."""
    counts = torch.tensor([report.kept, *(report.dropped[r] for r in REASONS)], device=accelerator.device)
    counts = accelerator.reduce(counts, "sum") if accelerator.num_processes > 1 else counts
    kept, *dropped = counts.tolist()
    return {"kept": kept, "dropped": {r: n for r, n in zip(REASONS, dropped) if n}, "examples": report.examples}


def save_checkpoint(s: Session, state: TrainState) -> Path:
    """Model, optimizer, scheduler and RNG states (accelerate) + where each process is in the data."""
    path = Path(s.run.output) / f"checkpoint-{state.step}"
    s.accelerator.save_state(str(path))
    positions = s.accelerator.gather(torch.tensor([state.position], device=s.accelerator.device)).tolist()
    if s.accelerator.is_main_process:
        saved = {
            "stage": s.stage.name,
            "step": state.step,
            "epoch": state.epoch,
            "positions": positions,
            "reports": state.reports,
        }
        # Written last: a folder without it is a save cut short, which _checkpoints ignores.
        (path / "trainer_state.json").write_text(json.dumps(saved, indent=1))
        for old in _checkpoints(s.run.output)[: -s.run.save_total_limit]:
            shutil.rmtree(old)
    s.accelerator.wait_for_everyone()
    return path


def _checkpoints(output: str) -> list[Path]:
    found = [p for p in Path(output).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _check_output(run: RunConfig) -> None:
    """A fresh run must not mix its checkpoints and logs with an earlier run's."""
    if run.resume:
        return
    if _checkpoints(run.output):
        raise ValueError(
            f"{run.output} holds checkpoints of an earlier run; pass --resume to continue it, or another --output"
        )
    Path(run.output).mkdir(parents=True, exist_ok=True)
    (Path(run.output) / "log.jsonl").unlink(missing_ok=True)


def _resume(s: Session) -> TrainState:
    found = _checkpoints(s.run.output)
    if not found:
        _print(s.accelerator, f"no checkpoint in {s.run.output}; starting from step 0")
        Path(s.run.output).mkdir(parents=True, exist_ok=True)
        return TrainState()
    path = found[-1]
    saved = json.loads((path / "trainer_state.json").read_text())
    if saved["stage"] != s.stage.name or len(saved["positions"]) != s.accelerator.num_processes:
        raise ValueError(
            f"{path} is a {saved['stage']} checkpoint of {len(saved['positions'])} process(es); resume it as "
            f"{saved['stage']} with that many processes, or pass another --output"
        )
    s.accelerator.load_state(str(path))
    _print(s.accelerator, f"resuming from {path}")
    position = saved["positions"][s.accelerator.process_index]
    return TrainState(saved["step"], saved["epoch"], position, saved["reports"])


def _save_final(s: Session, tokenizer, state: TrainState) -> Path:
    s.accelerator.wait_for_everyone()
    out = Path(s.run.output)
    if s.accelerator.is_main_process:
        save_model(s.accelerator.unwrap_model(s.model), tokenizer, out)
        settings = {"stage": {**asdict(s.stage), "trainable": sorted(s.stage.trainable)}, "run": asdict(s.run)}
        (out / "training.json").write_text(
            json.dumps({**settings, "steps": state.step, "data": state.reports}, indent=1)
        )
        tqdm.write(f"saved {s.stage.name} model to {out} after {state.step} steps")
    s.accelerator.wait_for_everyone()
    return out
