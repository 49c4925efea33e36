"""Stage 0, speech side: a tiny Whisper encoder pretrained with CTC ASR, and a speech-emotion classifier.

    python -m train pretrain-asr --manifest train/manifest.jsonl --eval-manifest eval/manifest.jsonl --out runs/asr
    python -m train pretrain-ser --manifest train/manifest.jsonl --eval-manifest eval/manifest.jsonl \\
        --init-encoder runs/asr --out runs/ser

The ASR model (`CtcRecognizer`) is the cascades' recogniser, and its encoder is the one BLSP-Emo
freezes; the emotion classifier (`WhisperEmotionClassifier`) is `cascade-ser`'s separate SER. Both
encode in clip mode (`encode_full_window=False`), so a 3 s clip costs 3 s of compute. Log-mel
features come from the same `log_mel` inference uses, once per clip, and stay in memory as float16
(only the clip's own frames); batches hold clips of similar length, `--batch-seconds` of audio
with padding counted, so little compute goes to padding. Each command writes the model folder
(`load_pretrained(CtcRecognizer | WhisperEmotionClassifier, DIR)`) and `DIR/metrics.json` with the
held-out scores (WER and CER; accuracy and macro-F1) and the measured times.

This module is the command line; the features and batches are in `speech_corpus.py`, the training
loop in `speech_fit.py`, the two models and their held-out scores in `speech_models.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from train.demo_world.speech_corpus import Corpus, load_corpus
from train.demo_world.speech_fit import FitOptions, FitReport
from train.demo_world.speech_models import (
    EncoderSize,
    build_ser,
    evaluate_asr,
    score_classifier,
    train_asr,
    train_ser,
    write_word_lm,
)
from train.manifest import ManifestError

# --- command line -------------------------------------------------------------------------------

# Chosen by measurement on 7040 clips (5.9 h) of 12 training voices, scored on 528 clips of the six
# reserved voices (CPU seconds on one free core; features ~25 s more): ASR 4 epochs ~690 s; SER
# from scratch 5 epochs ~260 s, fine-tuned from the ASR encoder 1 epoch ~175 s, probe 4 epochs ~215 s.
ASR_SIZE = EncoderSize(d_model=128, layers=4, heads=4, ffn=512)
ASR_FIT = FitOptions(epochs=4, batch_seconds=30.0, lr=4e-3, warp=0.1, stretch=0.1)
SER_SIZE = EncoderSize(d_model=64, layers=2, heads=4, ffn=256)
# SER recipes by how the encoder starts. No tempo stretch: speaking rate is an emotion cue.
SER_FIT = {
    "scratch": FitOptions(epochs=5, batch_seconds=30.0, lr=2e-3, warp=0.1),
    # --init-encoder. On the demo corpus (3520 clips, 626 voices) 3 epochs with VTLP scored 77.7 % on
    # the held-out voices, 1 epoch without VTLP 62.5 %.
    "fine-tune": FitOptions(epochs=3, batch_seconds=30.0, lr=1e-3, warp=0.1),
    "probe": FitOptions(epochs=4, batch_seconds=30.0, lr=3e-3),  # --init-encoder --freeze-encoder
}
TUNED = ("epochs", "batch_seconds", "lr", "warp", "stretch")  # options whose default depends on the recipe


def add_asr_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr`: CTC pretraining of the speech encoder."""
    _add_common(parser, {"": ASR_FIT})
    _add_size(parser, ASR_SIZE)


def add_ser_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ser`: the separate speech-emotion classifier of `cascade-ser`."""
    _add_common(parser, SER_FIT)
    _add_size(parser, SER_SIZE)
    parser.add_argument(
        "--init-encoder", metavar="ASR_DIR", help="start the encoder from this ASR model (and its size)"
    )
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="with --init-encoder, train only the head: a linear probe of the mean-pooled states",
    )
    parser.add_argument(
        "--tune-layers",
        type=int,
        metavar="K",
        help="with --init-encoder, fine-tune only the encoder's top K layers (and its final norm)",
    )


def _add_common(parser: argparse.ArgumentParser, recipes: dict[str, FitOptions]) -> None:
    add = parser.add_argument
    add("--manifest", required=True, help="training clips: JSON lines with audio, text (and emotion for ser)")
    add("--eval-manifest", help="held-out clips scored into DIR/metrics.json (reserved voices, eval sentences)")
    add(
        "--out",
        required=True,
        metavar="DIR",
        help="model folder to write (config.json, model.safetensors, metrics.json)",
    )
    helps = {
        "batch_seconds": "audio per batch, padding included",
        "lr": "peak of warmup + linear decay",
        "warp": "formants scaled by up to 1 +- WARP per clip",
        "stretch": "tempo scaled by up to 1 +- STRETCH per clip",
    }
    for name in TUNED:
        defaults = ", ".join(
            f"{mode} {getattr(fit, name):g}" if mode else f"{getattr(fit, name):g}" for mode, fit in recipes.items()
        )
        kind = int if name == "epochs" else float
        add(f"--{name.replace('_', '-')}", type=kind, help=f"{helps.get(name, '')} (default: {defaults})".lstrip())
    add("--no-spec-augment", dest="spec_augment", action="store_false", help="no time/frequency masks")
    add("--seed", type=int, default=0)
    add("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 when other jobs share the cores)")


def _add_size(parser: argparse.ArgumentParser, size: EncoderSize) -> None:
    group = parser.add_argument_group("encoder size")
    for name, value in asdict(size).items():
        group.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {value}")


def _size(args: argparse.Namespace, default: EncoderSize) -> EncoderSize:
    given = {name: getattr(args, name) for name in asdict(default) if getattr(args, name) is not None}
    if given and getattr(args, "init_encoder", None):
        raise ValueError(f"{sorted(given)} size a new encoder; --init-encoder takes the ASR model's size, so drop them")
    return EncoderSize(**{**asdict(default), **given})


def _setup(args: argparse.Namespace, recipe: FitOptions) -> tuple[FitOptions, Path]:
    given = {name: getattr(args, name) for name in TUNED if getattr(args, name) is not None}
    fit = replace(recipe, **given, spec_augment=args.spec_augment, seed=args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return fit, out


def _corpora(args: argparse.Namespace) -> tuple[Corpus, Corpus | None, float]:
    start = time.perf_counter()
    train = load_corpus(args.manifest)
    held_out = load_corpus(args.eval_manifest) if args.eval_manifest else None
    seconds = round(time.perf_counter() - start, 1)
    tqdm.write(f"features: {len(train.features)} training clips ({train.hours:.2f} h) in {seconds} s")
    return train, held_out, seconds


def run_asr(args: argparse.Namespace) -> int:
    options, out = _setup(args, ASR_FIT)
    size = _size(args, ASR_SIZE)
    train, held_out, feature_seconds = _corpora(args)
    model, report = train_asr(train, size, options)
    model.save_pretrained(str(out))
    decoder = write_word_lm(model, train, out)
    scores = evaluate_asr(model, held_out, decoder=decoder) if held_out is not None else None
    _write_metrics(
        out, "asr", args, options, train, feature_seconds, report, model, {"size": asdict(size), "eval": scores}
    )
    return 0


def run_ser(args: argparse.Namespace) -> int:
    if args.freeze_encoder and not args.init_encoder:
        raise ValueError("--freeze-encoder probes a trained encoder: pass --init-encoder ASR_DIR too")
    mode = "scratch" if not args.init_encoder else "probe" if args.freeze_encoder else "fine-tune"
    options, out = _setup(args, SER_FIT[mode])
    model = build_ser(_size(args, SER_SIZE), args.init_encoder, args.freeze_encoder, args.tune_layers)  # fail fast
    train, held_out, feature_seconds = _corpora(args)
    report = train_ser(model, train, options)
    model.save_pretrained(str(out))
    scores = score_classifier(model, held_out) if held_out is not None else None
    c = model.config.encoder_config
    size = EncoderSize(c.d_model, c.encoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim)
    extra = {"size": asdict(size), "recipe": mode, "init_encoder": args.init_encoder, "eval": scores}
    _write_metrics(out, "ser", args, options, train, feature_seconds, report, model, extra)
    return 0


def _write_metrics(
    out: Path,
    command: str,
    args,
    options: FitOptions,
    train: Corpus,
    feature_seconds: float,
    report: FitReport,
    model: torch.nn.Module,
    extra: dict,
) -> None:
    metrics = {
        "command": command,
        "manifest": args.manifest,
        "eval_manifest": args.eval_manifest,
        "train_clips": len(train.features),
        "train_hours": round(train.hours, 3),
        "dropped": train.dropped,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "options": asdict(options),
        "feature_seconds": feature_seconds,
        "fit": asdict(report),
        "seconds_per_epoch": round(report.seconds / report.epochs, 1),
        "cpu_seconds_per_epoch": round(report.cpu_seconds / report.epochs, 1),
        **extra,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    scores = extra.get("eval") or {}
    summary = {k: scores[k] for k in ("wer", "cer", "accuracy", "macro_f1") if k in scores}
    print(json.dumps({"out": str(out), **summary, "seconds_per_epoch": metrics["seconds_per_epoch"]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.demo_world.pretrain_speech",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_asr_arguments(sub.add_parser("asr", help="CTC ASR: the speech encoder and the cascades' recogniser"))
    add_ser_arguments(sub.add_parser("ser", help="the separate speech-emotion classifier of cascade-ser"))
    args = parser.parse_args(argv)
    try:
        return run_asr(args) if args.command == "asr" else run_ser(args)
    except (ManifestError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
