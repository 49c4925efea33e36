"""`python -m train reply-probe`: what a stage-2 model says, on a sample, before a whole evaluation.

The world's evaluation (`world_eval.py`) takes hours on 2 cores; a change to what stage 2 learns
from (the cleaning rules, the teacher) is first tried here on a seeded sample of clips:

    python -m train reply-probe --model runs/world/stage2_clean_replies \\
        --manifest runs/world/corpus_eval/manifest.jsonl:50 --manifest runs/world/eval_real/manifest.jsonl:30

For each manifest (`PATH:N`, N clips drawn evenly over the emotions as the evaluation draws them)
it prints the emotion the model heard (accuracy), the judge's reply-emotion match (`--judge`),
the semantic agreement with the LLM's reply to the true transcript told the true emotion (the
evaluation's reference, kept in `--references` and made once per sample and LLM), and the share of
replies each of `clean`'s reply rules would reject: the teacher's failures that the student learns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def parse_sample(spec: str) -> tuple[Path, int]:
    path, _, n = spec.rpartition(":")
    if not path or not n.isdigit() or int(n) < 1:
        raise ValueError(f"--manifest takes PATH:N with N clips to draw (e.g. eval/manifest.jsonl:50), got {spec!r}")
    if not Path(path).is_file():
        raise ValueError(f"--manifest {path} does not exist")
    if not Path(path).read_text(encoding="utf-8").strip():
        raise ValueError(f"--manifest {path} has no clips; pass a manifest from `python -m train synth`")
    return Path(path), int(n)


def draw(manifest: Path, n: int, seed: int) -> list[dict]:
    """The evaluation's seeded draw of `n` rows, each clip read once here so that a bad one is named
    before a model loads (the clips are short; the probe reads them again when it scores)."""
    from blsp_emo.audio import load_audio
    from train.demo_world.world_eval import sample_rows

    try:
        rows = sample_rows(manifest, n, seed)
    except KeyError as e:
        raise ValueError(f"--manifest {manifest}: a row has no {e}; rows need audio, text and emotion") from e
    for row in rows:
        missing = sorted({"text", "emotion"} - row.keys())
        if missing:
            raise ValueError(f"--manifest {manifest}: a row has no {missing[0]!r}; rows need audio, text and emotion")
        load_audio(row["audio"])
    return rows


def references_file(folder: Path, system, rows: list[dict]) -> Path:
    """Where the references of `rows` are kept: named by what they depend on, the LLM base and the
    sampled texts and tones, so another sample or another LLM never reads them."""
    bases = getattr(system.model.config, "bases", None) or {}
    said = [(bases.get("llm", {}).get("sha256"), r["text"], r["emotion"]) for r in rows]
    return folder / f"{hashlib.sha256(json.dumps(said).encode()).hexdigest()[:16]}.json"


def probe(system, manifest: Path, rows: list[dict], judge, kept: Path, embed) -> dict:
    from train.clean import rejection_shares
    from train.demo_world.results import evaluate_system
    from train.demo_world.world_eval import agreement, reference_replies

    references = references_file(kept, system, rows)
    if references.is_file():
        made = json.loads(references.read_text())
    else:  # the LLM's own replies do not depend on the model probed: made once, then kept
        made = reference_replies(system.model.llm, system.tokenizer, rows)
        references.parent.mkdir(parents=True, exist_ok=True)
        references.write_text(json.dumps(made))
    result = evaluate_system(system, rows, judge, Path("/"), max_new_tokens=48, ask_all=False)
    replies = result["replies"]
    return {
        "manifest": str(manifest),
        "n": len(rows),
        "accuracy": result["accuracy"],
        "reply_emotion_match": result["reply_emotion_match"],
        "semantic_agreement": agreement(replies, made, embed) if embed is not None else None,
        "rejected": rejection_shares(replies, [r["text"] for r in rows]),
        "replies": [{"said": r["text"], "tone": r["emotion"], "reply": x} for r, x in zip(rows, replies)],
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a BLSP-Emo model folder (a stage-2 output) or a bundle")
    p.add_argument("--manifest", action="append", required=True, help="PATH:N, N clips to draw (repeat the flag)")
    p.add_argument("--judge", default="assets/models/tone_judge.json", help="the reply-tone judge (judge.py)")
    p.add_argument("--references", default="runs/reply_probe", help="folder keeping the reference replies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the results, replies included, as JSON here")


def run(args: argparse.Namespace) -> int:
    from blsp_emo.systems import load_system
    from train.demo_world.judge import ToneJudge
    from train.demo_world.world_eval import sentence_embedder

    try:  # every input checked before the model loads (AudioError is a ValueError)
        samples = [(manifest, draw(manifest, n, args.seed)) for manifest, n in map(parse_sample, args.manifest)]
        judge = ToneJudge.load(args.judge)
    except (ValueError, OSError) as e:
        print(f"error: {e}")
        return 2
    system = load_system("blsp-emo", model=args.model)
    embed = sentence_embedder()
    results = []
    for manifest, rows in samples:
        result = probe(system, manifest, rows, judge, Path(args.references), embed)
        print(json.dumps({k: v for k, v in result.items() if k != "replies"}), flush=True)
        results.append(result)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0
