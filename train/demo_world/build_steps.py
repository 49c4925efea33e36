"""The steps of `python -m train demo-scratch` (`demo.py`): the build's scales and each step that makes a part.

`Build` runs one step at a time into the work folder, skipping a step whose output exists, so a
stopped build resumes: sentences, generated speakers, the two corpora, the stage-0 models, the
assembled starting folder, teacher labels and the two alignment stages.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from blsp_emo.prompts import SYSTEM_EMPATHETIC, instruction_pieces, told_emotion
from train.demo_world.pretrain_lm import LmOptions


@dataclass(frozen=True)
class Scale:
    train_sentences: int
    eval_sentences: int
    voices_per_sentence: int  # training voices per training sentence (each says all its tones)
    eval_voices_per_sentence: int  # held-out voices per held-out sentence
    speakers: int  # generated training speakers beside espeak-ng's own variants (train/demo_world/speakers.py)
    accents: int  # generated training accents, recombined from the training accents' parts
    accents_per_speaker: int  # accents each generated speaker speaks with
    asr_args: tuple[str, ...]
    ser_args: tuple[str, ...]
    lm: LmOptions
    stage1_epochs: int
    stage2_epochs: int
    stage2_max_steps: int | None  # caps stage 2 (the build's longest step) within the time budget
    batch_size: int
    eval_clips: int | None  # held-out clips scored per system (None: all)


SCALES = {
    "full": Scale(
        # Two voices per sentence and two accents per generated speaker: the build of one and one
        # (3520 clips, 626 voices) fitted its training clips (emotion loss 0.05) yet heard 82.6 % of
        # the held-out voices; the training steps stay as they were (ASR, SER and stage 1 take
        # half the epochs over twice the clips; stage 2 is capped in steps).
        train_sentences=800,
        eval_sentences=60,
        voices_per_sentence=2,
        eval_voices_per_sentence=1,
        speakers=200,
        accents=24,
        accents_per_speaker=2,
        asr_args=("--threads", "1", "--epochs", "2"),
        ser_args=("--threads", "1", "--epochs", "2"),
        lm=LmOptions(
            epochs=3,
            vocab_size=2048,
            hidden_size=128,
            layers=3,
            intermediate_size=384,
            batch_tokens=1536,
            lr=3e-3,
            threads=1,
        ),
        stage1_epochs=1,
        stage2_epochs=3,
        stage2_max_steps=1600,
        batch_size=16,
        eval_clips=None,
    ),
    "ci": Scale(
        train_sentences=12,
        eval_sentences=4,
        voices_per_sentence=1,
        eval_voices_per_sentence=1,
        speakers=3,
        accents=2,
        accents_per_speaker=2,
        asr_args=("--epochs", "1", "--d-model", "32", "--layers", "1", "--heads", "2", "--ffn", "64"),
        ser_args=("--epochs", "1"),
        lm=LmOptions(
            epochs=12,
            vocab_size=400,
            hidden_size=48,
            layers=1,
            heads=2,
            kv_heads=1,
            intermediate_size=96,
            batch_tokens=1024,
            lr=5e-3,
            warmup_steps=10,
        ),
        stage1_epochs=1,
        stage2_epochs=1,
        stage2_max_steps=None,
        batch_size=8,
        eval_clips=6,
    ),
}


class StopBuild(Exception):
    """The build reached the step it was told to stop before (`--stop-before`)."""


class Build:
    """The steps of the build; each returns its output path and skips work already done."""

    def __init__(self, work: Path, scale: Scale, seed: int = 0, log=print, stop_before: str | None = None):
        self.work, self.scale, self.seed, self.log = work, scale, seed, log
        self.stop_before = stop_before  # a step to leave to another machine (a stage on a GPU)
        self.times: dict[str, float] = {}  # steps run by this invocation
        self.times_file = work / "step_seconds.json"  # every step's time, across resumed runs

    def all_times(self) -> dict[str, float]:
        return json.loads(self.times_file.read_text()) if self.times_file.exists() else {}

    def step(self, name: str, output: Path, make, resume: bool = False) -> Path:
        """`make(partial)` then rename it to `output`, unless `output` exists. A stopped step's partial
        output is removed first, or with `resume` kept for `make` to continue from (a teacher's
        lines, a stage's checkpoints); its time is then that of the run that finished it."""
        if output.exists():
            self.log(f"[demo] {name}: done before ({output})")
            return output
        if name == self.stop_before:
            raise StopBuild(f"stopped before {name}: make {output} (e.g. on a GPU), then run the build again")
        self.log(f"[demo] {name} ...")
        start = time.perf_counter()
        partial = output.with_name(output.name + ".partial")
        if partial.exists() and not resume:
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
        make(partial)
        partial.rename(output)
        self.times[name] = time.perf_counter() - start
        self.times_file.write_text(json.dumps({**self.all_times(), name: self.times[name]}, indent=2))
        self.log(f"[demo] {name}: {self.times[name]:.0f} s")
        return output

    def sentences(self, split: str, n: int) -> Path:
        from train.demo_world.sentences import generate, write_sentences

        return self.step(
            f"sentences-{split}",
            self.work / f"sentences_{split}.jsonl",
            lambda out: write_sentences(generate(n, self.seed, split), out),
        )

    def generated_speakers(self) -> Path:
        from train.demo_world.speakers import write_speakers

        return self.step(
            "speakers",
            self.work / "speakers",
            lambda out: write_speakers(out, self.scale.speakers, self.seed, self.scale.accents),
        )

    def corpus(self, split: str, sentences: Path) -> Path:
        from train.demo_world import synth
        from train.demo_world.sentences import read_sentences
        from train.demo_world.speakers import espeak_data, generated_accents, read_speakers, speaker_voices
        from train.demo_world.voices import EVAL_VOICES, TRAIN_ACCENTS, TRAIN_VOICES, check_voices

        specs, data = list(EVAL_VOICES), None
        if split == "train":
            data = self.generated_speakers()
            accents = (*TRAIN_ACCENTS, *generated_accents(data))
            specs = [
                *TRAIN_VOICES,
                *speaker_voices(read_speakers(data), accents, self.seed, self.scale.accents_per_speaker),
            ]
        per_sentence = self.scale.voices_per_sentence if split == "train" else self.scale.eval_voices_per_sentence

        def make(out: Path) -> None:
            with espeak_data(data):
                voices = check_voices(specs, evaluation=split == "eval")
                clips = synth.plan(read_sentences(sentences), voices, seed=self.seed, voices_per_sentence=per_sentence)
                synth.synthesize(clips, out, workers=2, verbose=False)

        return self.step(f"synth-{split}", self.work / f"corpus_{split}", make) / "manifest.jsonl"

    def speech_model(self, kind: str, manifest: Path, eval_manifest: Path, extra: tuple[str, ...]) -> Path:
        from train.demo_world import pretrain_speech

        def make(out: Path) -> None:
            parser = argparse.ArgumentParser()
            getattr(pretrain_speech, f"add_{kind}_arguments")(parser)
            args = parser.parse_args(
                ["--manifest", str(manifest), "--eval-manifest", str(eval_manifest), "--out", str(out), *extra]
            )
            if getattr(pretrain_speech, f"run_{kind}")(args) != 0:
                raise RuntimeError(f"pretraining {kind} failed")

        return self.step(f"pretrain-{kind}", self.work / kind, make)

    def lm(self, sentences: Path) -> Path:
        from train.demo_world.pretrain_lm import train_lm
        from train.demo_world.sentences import read_sentences

        def make(out: Path) -> None:
            model, tokenizer, report = train_lm(
                [(s.text, s.cue) for s in read_sentences(sentences)], replace(self.scale.lm, seed=self.seed), self.log
            )
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(out)
            (out / "metrics.json").write_text(json.dumps(report, indent=2))

        return self.step("pretrain-lm", self.work / "lm", make)

    def assemble(self, asr: Path, lm: Path) -> Path:
        from train.demo_world.pretrain_lm import assemble

        return self.step("assemble", self.work / "init", lambda out: assemble(asr, lm, out, seed=self.seed))

    def teacher(self, stage_name: str, manifest: Path, model_dir: Path) -> Path:
        from blsp_emo.model.checkpoint import load_model
        from train.clean import clean
        from train.stages import STAGES
        from train.teacher import generate_teacher_outputs

        def make(out: Path) -> None:
            model, tokenizer = load_model(str(model_dir))
            generate_teacher_outputs(model.llm, tokenizer, STAGES[stage_name], manifest, out, batch_size=64)
            if stage_name == "stage2":
                chat_alignment_rows(model.llm, tokenizer, manifest, out / "chat_0_1.jsonl")
            clean([out])

        return self.step(f"teacher-{stage_name}", self.work / f"labels_{stage_name}", make)

    def stage(self, stage_name: str, labels: Path, init: Path, epochs: int, max_steps: int | None = None) -> Path:
        from train.loop import RunConfig, train
        from train.stages import STAGES, with_encoder

        stage = replace(
            STAGES[stage_name],
            epochs=epochs,
            batch_size=self.scale.batch_size,
            grad_accum=1,
            warmup_steps=50,
            lr=1e-3 if stage_name == "stage1" else 5e-4,
            save_steps=10_000,
        )
        if stage_name == "stage2":
            stage = with_encoder(stage)  # the paper's figure: the encoder learns to hear tone too
        manifests = tuple(sorted(str(p) for p in labels.glob("*_clean.jsonl")))
        # Held-out voices were mostly missed for pitch and timbre outside the training voices'; warping
        # the mel axis in stage 2 (which trains the encoder and the emotion head) shows it more speakers.
        warp = 0.1 if stage_name == "stage2" else 0.0
        return self.step(
            stage_name,
            self.work / stage_name,
            lambda out: train(
                stage,
                RunConfig(
                    manifests, str(init), str(out), max_steps=max_steps, warmup_type="linear", log_steps=50, warp=warp
                ),
            ),
        )


def chat_alignment_rows(llm, tokenizer, manifest: Path, out: Path, batch_size: int = 64) -> None:
    """Stage-2 rows in the chat layout: the student hears only the speech; the teacher is the LLM
    told the emotion in the words cascade-ser uses, so both answer the same conversation.

    Resumable: each batch's replies are appended to `out`'s memo file (not *.jsonl, which `clean`
    and the stages read) as it is made, and a rerun asks only for the prompts not in it."""
    from train.manifest import read_rows
    from train.teacher import continue_prompts

    rows = [r for r in read_rows([manifest], ("audio", "text")) if r.emotion]
    out.parent.mkdir(parents=True, exist_ok=True)
    memo_file = out.with_name(out.stem + ".memo")
    memo: dict[tuple[int, ...], tuple[str, bool]] = {}
    if memo_file.is_file():
        kept = memo_file.read_text(encoding="utf-8")
        kept = kept[: kept.rfind("\n") + 1]  # a line cut by a stop is dropped and asked again
        memo_file.write_text(kept, encoding="utf-8")
        for line in kept.splitlines():
            done = json.loads(line)
            memo[tuple(done["prompt"])] = (done["output"], done["early_stop"])
    prompts = [
        tuple(
            tokenizer.encode_pieces(
                instruction_pieces(told_emotion(SYSTEM_EMPATHETIC, r.emotion), "", r.fields["text"])
            ).input_ids
        )
        for r in rows
    ]
    todo = [p for p in dict.fromkeys(prompts) if p not in memo]
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        made = list(zip(chunk, continue_prompts(llm, tokenizer, [list(p) for p in chunk])))
        with memo_file.open("a", encoding="utf-8") as f:
            f.writelines(
                json.dumps({"prompt": list(p), "output": text, "early_stop": stop}, ensure_ascii=False) + "\n"
                for p, (text, stop) in made
            )
        memo.update(made)
    with out.open("w", encoding="utf-8") as f:
        for row, prompt in zip(rows, prompts):
            text, early_stop = memo[prompt]
            line = {
                **row.fields,
                "instruction": "",
                "audio_instruction": "",
                "output": text,
                "early_stop": early_stop,
                "emotion": row.emotion,
            }
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
