"""`python -m train demo-scratch`: the earlier synthetic world, built from nothing (a CTC encoder and a
1M-parameter LM trained here); `python -m train demo` (`bases_build.py`) builds the bundled models.

    sentences -> generated speakers -> synth (training voices | reserved voices) -> stage 0: CTC
    ASR encoder, emotion classifier, BPE + chat LM -> assemble -> teacher (stage 1) -> stage 1 ->
    teacher (stage 2) -> stage 2 -> tone judge -> evaluation on held-out voices and sentences -> bundle

Every step writes into `--work` and is skipped when its output exists, so a stopped build
resumes. The result is the bundle `--out` (blsp-emo/, blsp/, asr/, ser/) that the app and the CLI
load by default, example clips, and `results.md` / `results.json`. The steps are in
`build_steps.py`, the held-out evaluation and the results table in `results.py`.

One deviation from the paper, needed at this size: stage 2 also aligns the chat layout (the
speech alone in the user turn, as the released chat demo prompts), with the LLM told the emotion
as teacher. Qwen-7B carries the continuation training over to chat by itself; a 1M-parameter LM
trained on templates does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from train.demo_world.build_steps import SCALES, Build, Scale
from train.demo_world.bundle import bundle
from train.demo_world.results import evaluate_system, held_out_rows, results_table

# --- the bundle -------------------------------------------------------------------------------------


def tone_only_examples(out: Path, seed: int = 0) -> list[Path]:
    """The same held-out sentence in all five emotions by two held-out voices, no jitter."""
    from train.demo_world import synth
    from train.demo_world.sentences import generate
    from train.demo_world.voices import EVAL_VOICES, check_voices

    sentence = next(s for s in generate(50, seed + 1, "eval", cue_fraction=0.0))
    voices = check_voices(list(EVAL_VOICES[:2]), evaluation=True)
    tmp = out.with_name(out.name + ".render")
    synth.synthesize(synth.plan([sentence], voices, seed=seed, jitter=0.0), tmp, workers=2, verbose=False)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for line in (tmp / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        voice = row["voice"].replace("+", "-")
        path = out / f"tone-only_{voice}_{row['emotion']}.wav"
        shutil.copy2(tmp / row["audio"] if not Path(row["audio"]).is_absolute() else row["audio"], path)
        made.append(path)
    (out / "README.md").write_text(
        f'Tone-only examples: every clip says "{sentence.text}" (a held-out sentence whose words carry no\n'
        f"emotion), in one of five emotions by one of two held-out voices: `tone-only_<voice>_<emotion>.wav`.\n"
        f"Made by `python -m train demo-scratch` with espeak-ng (see the prosody table in the README).\n"
    )
    shutil.rmtree(tmp)
    return made


# --- the whole build --------------------------------------------------------------------------------


def build_models(work: Path, out: Path, examples: Path, scale: Scale, seed: int = 0, log=print) -> dict:
    from blsp_emo.systems import available_systems, load_system
    from train.demo_world.judge import fit_with_holdout

    work.mkdir(parents=True, exist_ok=True)
    b = Build(work, scale, seed, log)
    train_manifest = b.corpus("train", b.sentences("train", scale.train_sentences))
    eval_manifest = b.corpus("eval", b.sentences("eval", scale.eval_sentences))
    asr = b.speech_model("asr", train_manifest, eval_manifest, scale.asr_args)
    ser = b.speech_model("ser", train_manifest, eval_manifest, ("--init-encoder", str(asr), *scale.ser_args))
    init = b.assemble(asr, b.lm(work / "sentences_train.jsonl"))
    stage1 = b.stage("stage1", b.teacher("stage1", train_manifest, init), init, scale.stage1_epochs)
    labels2 = b.teacher("stage2", train_manifest, init)
    stage2 = b.stage("stage2", labels2, stage1, scale.stage2_epochs, scale.stage2_max_steps)

    rows = [json.loads(line) for f in sorted(labels2.glob("*_clean.jsonl")) for line in f.read_text().splitlines()]
    judge, judge_accuracy = fit_with_holdout([r["output"] for r in rows], [r["emotion"] for r in rows], seed=seed)
    bundle({"blsp-emo": stage2, "blsp": stage1, "asr": asr, "ser": ser}, out)
    judge.save(out / "tone_judge.json")
    tone_only_examples(examples, seed)

    held_out = held_out_rows(eval_manifest, scale.eval_clips)
    results = []
    evaluation_start = time.perf_counter()
    for name in available_systems():
        log(f"[demo] evaluating {name} on {len(held_out)} held-out clips")
        results.append(evaluate_system(load_system(name, model=out), held_out, judge, eval_manifest.parent))
    steps = {**b.all_times(), "evaluation": time.perf_counter() - evaluation_start}
    seconds = sum(steps.values())  # the whole build, resumed runs included
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "build_seconds": seconds,
        "step_seconds": steps,
        "ran_now": sorted(b.times),
        "judge_accuracy": judge_accuracy,
        "results": results,
        "cpu_count": os.cpu_count(),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(results_table(results, judge_accuracy, seconds))
    log(results_table(results, judge_accuracy, seconds))
    return report


RESULTS_START, RESULTS_END = "<!-- results:start (written by python -m train demo) -->", "<!-- results:end -->"


def update_readme(readme: Path, table: str) -> bool:
    """Replace the README's results block with `table`; False when the markers are missing."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    start, end = text.find(RESULTS_START), text.find(RESULTS_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[: start + len(RESULTS_START)] + "\n" + table + text[end:])
    return True


def add_arguments(p: argparse.ArgumentParser) -> None:
    # The bundled models are the pretrained-bases build's (`train demo`): this world writes beside
    # them unless told otherwise, so rebuilding it never replaces what the app loads.
    p.add_argument("--scale", choices=sorted(SCALES), default="full", help="ci: minutes, tiny sizes (the test)")
    p.add_argument("--work", default="runs/demo", help="intermediate files; reruns skip finished steps")
    p.add_argument("--out", default="runs/demo/bundle", help="the bundle (a folder that --model takes)")
    p.add_argument("--examples", default="runs/demo/examples", help="its tone-only example clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is fastest for these tiny models (2 threads thrash on 2 busy cores)",
    )
    p.add_argument("--readme", default="", help="a README whose results block to rewrite (default: none)")


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    build_models(Path(args.work), Path(args.out), Path(args.examples), SCALES[args.scale], args.seed)
    if args.readme and update_readme(Path(args.readme), (Path(args.out) / "results.md").read_text()):
        print(f"results table written into {args.readme}")
    return 0
