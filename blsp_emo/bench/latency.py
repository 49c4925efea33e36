"""`python -m blsp_emo bench`: latency and memory of every system on the same clips, in one run.

For each system and clip length: time to the first reply token, total reply time, time inside the
speech encoder(s), real-time factor and peak memory, as medians over repeated runs after a warm-up.
Every reply is decoded greedily to the same fixed length, so `total_s` compares the same work (a
system that happens to stop early is not "faster"). Ratios of `blsp-emo` to `cascade` are measured
side by side in the same process, on the same clips, the systems taking turns reply by reply, so
machine load affects both alike.

`--scale full --random-weights` builds the released architecture (Whisper-large-v2 encoder, Qwen-7B
shapes) with random weights, where no download is possible; see `scales.py`.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from blsp_emo.audio import SAMPLE_RATE, load_audio
from blsp_emo.bench import serving as bench_serving
from blsp_emo.decoding.generation import GenerationOptions
from blsp_emo.prompts import Turn
from blsp_emo.systems import SpokenDialogueSystem

EXAMPLES = Path(__file__).resolve().parents[2] / "assets" / "examples"
CLIP_SECONDS = (1.0, 5.0, 15.0, 30.0)


@dataclass(frozen=True)
class BenchOptions:
    clip_seconds: tuple[float, ...] = CLIP_SECONDS
    repeats: int = 5  # measured runs per (system, clip); medians are reported
    warmup: int = 1  # unmeasured runs first (lazy init, allocator, caches)
    new_tokens: int = 32  # every reply is exactly this long
    turns: int = 3  # conversation length for the KV-reuse measurement; 0 skips it

    def __post_init__(self):
        if self.repeats < 1 or self.warmup < 0 or self.new_tokens < 1 or self.turns < 0:
            raise ValueError(f"repeats and new_tokens must be >= 1, warmup and turns >= 0; got {self}")
        if not self.clip_seconds or min(self.clip_seconds) <= 0:
            raise ValueError(f"clip lengths must be positive seconds, got {self.clip_seconds}")

    @property
    def generation(self) -> GenerationOptions:
        return GenerationOptions(max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens, greedy=True, seed=0)


@dataclass(frozen=True)
class Result:
    """One row of `--json` `results` (medians); `peak_gpu_mb` only where there is a GPU."""

    system: str
    clip_s: float
    first_token_s: float
    total_s: float
    encoder_s: float
    rtf: float
    peak_rss_mb: float
    peak_gpu_mb: float | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        if out["peak_gpu_mb"] is None:
            del out["peak_gpu_mb"]
        return out


@dataclass(frozen=True)
class TurnResult:
    """Time to first token of the last turn of a conversation, with and without KV-cache reuse."""

    system: str
    turns: int
    clip_s: float
    first_token_s_recompute: float
    first_token_s_reuse: float
    total_s_recompute: float
    total_s_reuse: float
    same_tokens: bool  # the reused cache gave the same greedy reply


@dataclass
class Report:
    machine: dict
    settings: dict
    results: list[Result] = field(default_factory=list)
    turns: list[TurnResult] = field(default_factory=list)
    decode: dict = field(default_factory=dict)
    serving: dict = field(default_factory=dict)  # bench_serving.to_json: decode step, concurrent replies, collection

    def ratios(
        self, numerator: str = "blsp-emo", denominators: Sequence[str] = ("cascade", "cascade-ser")
    ) -> list[dict]:
        """`numerator`'s times over each denominator's, per clip (cascade-ser: the pipeline that also hears tone)."""
        rows = {(r.system, r.clip_s): r for r in self.results}
        out = []
        for denominator in denominators:
            for (system, clip), r in rows.items():
                base = rows.get((denominator, clip))
                if system == numerator and base is not None:
                    out.append(
                        {
                            "clip_s": clip,
                            "of": f"{numerator}/{denominator}",
                            "first_token": r.first_token_s / base.first_token_s,
                            "total": r.total_s / base.total_s,
                        }
                    )
        return out

    def to_json(self) -> dict:
        return {
            "machine": self.machine,
            "results": [r.to_json() for r in self.results],
            "ratios": self.ratios(),
            "turns": [asdict(t) for t in self.turns],
            "decode": self.decode,
            "serving": self.serving,
            "settings": self.settings,
        }


# --- what is measured ---------------------------------------------------------------------------


def machine_info(device: str | None = None) -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device or "cpu",
    }
    if torch.cuda.is_available() and (device or "").startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


class PeakMemory:
    """Peak resident memory of this process (and GPU memory) over a block of work.

    Linux keeps the peak RSS in VmHWM; writing 5 to /proc/self/clear_refs resets it to the current
    RSS, so each block gets its own peak instead of the process's lifetime maximum.
    """

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # not Linux or not allowed: the peak is the process's so far
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        status = {k: v for k, _, v in (line.partition(":") for line in _read_lines("/proc/self/status"))}
        kb = status.get("VmHWM", "").split()
        self.rss_mb = int(kb[0]) / 1024 if kb else float("nan")
        self.gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        return False


class EncoderTimer:
    """Wall time spent inside every Whisper encoder a system holds, from its first conv to its final norm.

    Hooks on `conv1` and `layer_norm` catch both the full-window forward and the clip-length path
    (`encoder.py`), which runs the same submodules without `WhisperEncoder.forward`.
    """

    def __init__(self, system: SpokenDialogueSystem):
        self.seconds = 0.0
        self._start = None
        self._handles = []
        for encoder in _whisper_encoders(system):
            self._handles.append(encoder.conv1.register_forward_pre_hook(self._begin))
            self._handles.append(encoder.layer_norm.register_forward_hook(self._end))

    def _sync(self, module: nn.Module) -> None:
        if next(module.parameters()).is_cuda:
            torch.cuda.synchronize()

    def _begin(self, module, args):
        self._sync(module)
        self._start = time.perf_counter()

    def _end(self, module, args, output):
        self._sync(module)
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _whisper_encoders(system, depth: int = 3) -> list[nn.Module]:
    """Whisper encoders among the modules a system holds (its own, an ASR's, a classifier's), once each.

    Looks through plain objects too (e.g. a recogniser that wraps a CTC model with a word LM).
    """
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    found: dict[int, nn.Module] = {}
    seen: set[int] = set()

    def visit(obj, level: int) -> None:
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.update((id(m), m) for m in obj.modules() if isinstance(m, WhisperEncoder))
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            for value in vars(obj).values():
                visit(value, level + 1)

    visit(system, 0)
    return list(found.values())


# --- the clips ----------------------------------------------------------------------------------


def bench_clips(seconds: Sequence[float], examples: Path = EXAMPLES) -> tuple[dict[float, np.ndarray], str]:
    """One clip per length, cut from the bundled example speech played back to back (a tone if none)."""
    files = sorted(examples.glob("*.wav")) if examples.is_dir() else []
    if files:
        speech = np.concatenate([load_audio(f) for f in files])
        source = f"{examples.name}/*.wav back to back ({len(files)} clips)"
    else:
        t = np.arange(int(max(seconds) * SAMPLE_RATE)) / SAMPLE_RATE
        speech = (0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(t)) * t)).astype(np.float32)
        source = "a gliding tone (no example clips found)"
    reps = int(np.ceil(max(seconds) * SAMPLE_RATE / speech.size))
    speech = np.tile(speech, reps)
    return {s: speech[: int(round(s * SAMPLE_RATE))].copy() for s in seconds}, source


# --- running ------------------------------------------------------------------------------------


def _timed_reply(system: SpokenDialogueSystem, clip: np.ndarray, options: GenerationOptions, history=()):
    timer = EncoderTimer(system)
    try:
        reply = system.respond(clip, history=history, options=options)
    finally:
        timer.close()
    return reply, timer.seconds


def measure_clip(
    systems: Sequence[SpokenDialogueSystem], clip_s: float, clip: np.ndarray, options: BenchOptions
) -> list[Result]:
    """Medians over `options.repeats` replies of each system to `clip`, after `options.warmup` unmeasured
    ones. The systems take turns reply by reply, so a burst of load on the machine hits them alike."""
    gen = options.generation
    for _ in range(options.warmup):
        for system in systems:
            _cold(system)
            system.respond(clip, options=gen)
    runs: dict[str, dict[str, list[float]]] = {
        s.name: {"first": [], "total": [], "encoder": [], "rss": [], "gpu": []} for s in systems
    }
    for _ in range(options.repeats):
        for system in systems:
            _cold(system)  # a first turn: nothing of this prompt is cached yet
            with PeakMemory() as peak:
                reply, encoder_s = _timed_reply(system, clip, gen)
            if len(reply.token_ids) != options.new_tokens:
                raise RuntimeError(
                    f"{system.name} replied with {len(reply.token_ids)} tokens, not {options.new_tokens}"
                )
            run = runs[system.name]
            run["first"].append(reply.timings.first_token_s)
            run["total"].append(reply.timings.total_s)
            run["encoder"].append(encoder_s)
            run["rss"].append(peak.rss_mb)
            if peak.gpu_mb is not None:
                run["gpu"].append(peak.gpu_mb)
    out = []
    for name, run in runs.items():
        total = statistics.median(run["total"])
        out.append(
            Result(
                name,
                clip_s,
                statistics.median(run["first"]),
                total,
                statistics.median(run["encoder"]),
                total / clip_s,
                round(max(run["rss"]), 1),
                round(max(run["gpu"]), 1) if run["gpu"] else None,
            )
        )
    return out


def measure_turns(system: SpokenDialogueSystem, clip_s: float, clip: np.ndarray, options: BenchOptions) -> TurnResult:
    """The last turn of an `options.turns`-turn spoken conversation, re-encoding the history vs reusing its cache."""
    gen = options.generation
    history: list[Turn] = []
    for _ in range(options.turns - 1):
        reply = system.respond(clip, history=history, options=gen)
        history.extend(reply.turns(clip))
    without = _without_prefix_cache(system)
    runs = {}
    for label, sys_ in (("recompute", without), ("reuse", system)):
        firsts, totals, tokens = [], [], None
        for i in range(options.warmup + options.repeats):
            _cold(system)
            if label == "reuse":  # as in a conversation: only the turn before has left its cache
                system.respond(clip, history=history[:-2], options=gen)
            reply = sys_.respond(clip, history=history, options=gen)
            if i >= options.warmup:
                firsts.append(reply.timings.first_token_s)
                totals.append(reply.timings.total_s)
            tokens = reply.token_ids
        runs[label] = (statistics.median(firsts), statistics.median(totals), tokens)
    return TurnResult(
        system.name,
        options.turns,
        clip_s,
        runs["recompute"][0],
        runs["reuse"][0],
        runs["recompute"][1],
        runs["reuse"][1],
        runs["recompute"][2] == runs["reuse"][2],
    )


def _without_prefix_cache(system: SpokenDialogueSystem) -> SpokenDialogueSystem:
    """A shallow copy of `system` that re-encodes the whole history every turn (the behaviour before reuse)."""
    other = copy.copy(system)
    if hasattr(other, "prefix_cache"):
        other.prefix_cache = None
    return other


def has_prefix_cache(system: SpokenDialogueSystem) -> bool:
    return getattr(system, "prefix_cache", None) is not None


def _cold(system: SpokenDialogueSystem) -> None:
    if has_prefix_cache(system):
        system.prefix_cache.clear()


def run(
    systems: Sequence[SpokenDialogueSystem],
    options: BenchOptions,
    machine: dict,
    settings: dict,
    progress: Callable[[str], None] = lambda line: None,
) -> Report:
    clips, source = bench_clips(options.clip_seconds)
    report = Report(machine, {**settings, **asdict(options), "clips": source})
    for seconds in options.clip_seconds:
        fitting = [s for s in systems if seconds <= s.window_seconds]
        for system in systems:
            if system not in fitting:
                progress(f"skip {system.name} {seconds:g} s: longer than its {system.window_seconds:g} s window")
        for result in measure_clip(fitting, seconds, clips[seconds], options) if fitting else []:
            progress(
                f"{result.system:12s} {seconds:5.1f} s  first {result.first_token_s * 1e3:8.1f} ms  "
                f"total {result.total_s * 1e3:8.1f} ms  encoder {result.encoder_s * 1e3:7.1f} ms"
            )
            report.results.append(result)
    if options.turns > 1:
        seconds = 5.0 if 5.0 in clips else options.clip_seconds[0]
        for system in systems:
            if has_prefix_cache(system):
                report.turns.append(measure_turns(system, seconds, clips[seconds], options))
    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


# --- the command --------------------------------------------------------------------------------


def _device_and_dtype(args) -> tuple[str, torch.dtype]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    default = torch.bfloat16 if device.startswith("cuda") and args.random_weights else torch.float32
    return device, names[args.dtype] if args.dtype else default


def _systems(args, device: str, dtype: torch.dtype) -> list[SpokenDialogueSystem]:
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    if args.scale == "demo":
        if args.random_weights:
            raise ValueError("--random-weights builds --scale medium or full; demo scale uses the bundled models")
        from blsp_emo.systems import load_system

        dtype_name = {torch.float32: None, torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
        return [load_system(n, model=args.model, device=args.device, dtype=dtype_name) for n in names]
    if not args.random_weights:
        raise ValueError(
            f"--scale {args.scale} has no weights here: add --random-weights (or load real ones with "
            "--scale demo --model DIR)"
        )
    _refuse_full_on_cpu(args, device)
    from blsp_emo.bench.scales import random_systems, scale_config

    built = random_systems(scale_config(args.scale), device, dtype)
    return [s for s in built if s.name in names] or built


def _refuse_full_on_cpu(args, device: str) -> None:
    if args.scale == "full" and not device.startswith("cuda") and args.device is None:
        raise ValueError(
            "--scale full builds 8.5 B parameters: run it on a GPU machine (--device cuda); "
            "--device cpu forces it (about 34 GB of RAM in float32, minutes per reply)"
        )


def _print(lines: Iterator[str]) -> None:
    for line in lines:
        print(line, flush=True)


def main(args) -> int:
    import json
    import sys

    if args.threads:
        torch.set_num_threads(args.threads)
    clip_seconds = tuple(float(x) for x in args.clips.split(",") if x.strip())
    options = BenchOptions(clip_seconds, args.repeats, args.warmup, args.new_tokens, args.turns)
    device, dtype = _device_and_dtype(args)
    if args.encoder_window:
        return _encoder_window(args, options, device, dtype)
    systems = _systems(args, device, dtype)
    settings = {
        "scale": args.scale,
        "random_weights": args.random_weights,
        "dtype": str(dtype).removeprefix("torch."),
        "model": args.model or ("bundled demo models" if args.scale == "demo" else "random"),
    }
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    report = run(systems, options, machine_info(device), settings, progress)
    from blsp_emo.bench.report import copy_bandwidth, decode_bound, format_report

    llm = next((getattr(s, "model", None) for s in systems if getattr(s, "model", None) is not None), None)
    row = next((r for r in report.results if r.system == "blsp-emo" and r.clip_s == 5.0), None) or report.results[0]
    if llm is not None:
        report.decode = decode_bound(llm.llm, row, options.new_tokens, copy_bandwidth(device))
    serving = _serving(args, systems, options, llm, progress)
    report.serving = bench_serving.to_json(*serving)
    lines = [*format_report(report), *bench_serving.format_serving(*serving)]
    if args.json:  # the JSON on stdout, the same tables for people on stderr
        print(json.dumps(report.to_json()))
        print(file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)
    else:
        print()
        _print(iter(lines))
    return 0


def _serving(args, systems, options: BenchOptions, llm, progress):
    """The collection pause, the lean decode step against transformers' forward; with `--concurrent N`,
    N replies at once."""
    collection = bench_serving.measure_collection(options.repeats)
    progress(f"full garbage collection {collection.full_ms:.1f} ms, frozen {collection.frozen_full_ms:.3f} ms")
    step = bench_serving.measure_step(llm.llm, repeats=options.repeats) if llm is not None else None
    concurrent = None
    first = next((s for s in systems if s.name == "blsp-emo"), systems[0])
    if args.concurrent > 0:
        seconds = 5.0 if 5.0 in options.clip_seconds else options.clip_seconds[0]
        clip = bench_clips([seconds])[0][seconds]
        # N visitors: different audio of different lengths, so the batch holds rows of different lengths
        clips = [
            np.roll(clip, i * SAMPLE_RATE // 3)[: clip.size - i * SAMPLE_RATE // 8] for i in range(args.concurrent)
        ]
        concurrent = bench_serving.measure_concurrent(first, clips, seconds, options.generation, options.repeats)
        progress(
            f"{args.concurrent} replies at once: threads {concurrent.threads_wall_s * 1e3:.1f} ms, "
            f"batched {concurrent.batched_wall_s * 1e3:.1f} ms"
        )
    return step, concurrent, collection


def _encoder_window(args, options: BenchOptions, device: str, dtype: torch.dtype) -> int:
    """`bench --encoder-window`: a random-weights model of `--scale` at the released (full-window) setting."""
    import json

    from blsp_emo.bench.encoder_window import compare, format_results
    from blsp_emo.bench.scales import random_model, scale_config, word_tokenizer

    _refuse_full_on_cpu(args, device)
    scale = "tiny" if args.scale == "demo" else args.scale  # the demo models' shapes, random weights
    config = scale_config(scale, encode_full_window=True)
    model = random_model(config, device, dtype)
    clips, _ = bench_clips([s for s in options.clip_seconds if s <= config.window_seconds])
    results = compare(model, word_tokenizer(config.llm_config.vocab_size), clips, options.new_tokens, options.repeats)
    label = f"scale {scale}, {str(dtype).removeprefix('torch.')}, {device}"
    if args.json:
        print(json.dumps({"machine": machine_info(device), "scale": label, "results": [asdict(r) for r in results]}))
    else:
        _print(format_results(results, label))
    return 0
