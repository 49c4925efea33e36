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

from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import torch

from blsp_emo.audio import SAMPLE_RATE
from blsp_emo.bench import serving as bench_serving
from blsp_emo.bench.instruments import machine_info
from blsp_emo.bench.measurements import BenchOptions, bench_clips, run
from blsp_emo.systems import SpokenDialogueSystem
from blsp_emo.tts import SpeechSynthesizer

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
        parts = dict(model=args.model, asr=args.asr, llm=args.llm, device=args.device, dtype=dtype_name)
        return [load_system(n, **parts) for n in names]
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


def _voice(name: str | None) -> tuple[SpeechSynthesizer | None, str]:
    """The voice whose time to first audio is measured (None for `--tts none`), and its name."""
    from blsp_emo.tts import DEFAULT_SYNTHESIZER, SynthesizerUnavailableError, available_synthesizers, load_synthesizer

    name = name or DEFAULT_SYNTHESIZER
    if name not in available_synthesizers():
        raise ValueError(f"--tts {name!r} is no voice; choose one of {available_synthesizers()}")
    try:
        return (None, "none") if name == "none" else (load_synthesizer(name), name)
    except SynthesizerUnavailableError as e:
        raise ValueError(f"--tts {name}: {e}") from e


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
        "cascade_asr": args.asr,
        "cascade_llm": args.llm,
    }
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    voice, settings["voice"] = _voice(args.tts)
    report = run(systems, options, machine_info(device), settings, progress, voice)
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
