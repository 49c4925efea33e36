"""`python -m train baseline-probe`: does a speaker's earlier turns, as a baseline, help hear tone?

A voice's own pitch and pace are what one clip cannot separate from its tone. This probe measures
how much a baseline from the same voice's other clips (the visitor's earlier turns, in the app)
would give, before anyone builds it into a model:

    python -m train baseline-probe --train runs/world/recorded_train/manifest.jsonl --every 4 \\
        --eval runs/world/corpus_eval/manifest.jsonl --eval runs/world/eval_real/manifest.jsonl \\
        --turns 0,1,4,all --model assets/models/blsp-emo

For each clip it reads features: Praat's prosody readings (log median pitch, pitch range,
loudness, speaking rate, log duration; `blsp_emo.prosody_reading`) and, with `--model`, the
emotion head's own input (the adapter's output, mean-pooled). With `--turns K` each clip's features
are joined by their difference from the median of K other clips of its voice, drawn at random
(their tones too: earlier turns are not all neutral); `all` takes every other clip, and 0 none.
A logistic regression is fitted on the training clips with the same policy and scored on each
evaluation manifest. Nothing here writes a model: it tells which lever is worth a build.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blsp_emo.emotion import EMOTIONS

PROSODY = ("log_pitch", "pitch_range_st", "loudness_db", "speaking_rate", "log_duration")
FIT_STEPS = 1500  # full-batch Adam on at most a few thousand rows: converged well before this


@dataclass(frozen=True)
class Clips:
    features: np.ndarray  # (n, d)
    labels: np.ndarray  # (n,) indices into EMOTIONS
    voices: np.ndarray  # (n,) the voice (speaker) of each clip


def parse_turns(text: str) -> tuple[int | None, ...]:
    """'0,1,4,all' -> (0, 1, 4, None); None means every other clip of the voice."""
    turns = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "all":
            turns.append(None)
        elif part.isdigit():
            turns.append(int(part))
        else:
            raise ValueError(f"--turns {text!r}: write counts of earlier turns and/or 'all', e.g. 0,1,4,all")
    if not turns:
        raise ValueError("--turns is empty: give at least one count, e.g. 0,4,all")
    return tuple(turns)


def manifest_rows(path: Path, every: int = 1) -> list[dict]:
    """Every `every`-th row of a manifest, each with an emotion and a voice (or speaker)."""
    from train.manifest import read_rows

    if every < 1:
        raise ValueError(f"--every {every}: take every N-th row with N >= 1")
    rows = []
    for row in list(read_rows([path], ("audio", "emotion")))[::every]:
        voice = row.fields.get("voice") or row.fields.get("speaker")
        if not voice or not row.emotion:
            raise ValueError(f"{row.where}: needs an `emotion` and a `voice` (or `speaker`): the baseline is per voice")
        rows.append({"audio": row.fields["audio"], "emotion": row.emotion, "voice": voice})
    if not rows:
        raise ValueError(f"{path} has no rows: the probe needs clips with an emotion and a voice")
    return rows


def prosody_features(wave: np.ndarray) -> list[float]:
    """Praat's readings of one clip (`PROSODY`); NaN where it has none (unvoiced, silent)."""
    from blsp_emo.audio import SAMPLE_RATE
    from blsp_emo.prosody_reading import read_prosody

    r = read_prosody(SAMPLE_RATE, wave)
    pitch = np.log(r.median_pitch_hz) if r.median_pitch_hz else np.nan
    loud = r.loudness_db if np.isfinite(r.loudness_db) else np.nan
    return [pitch, r.pitch_range_st or 0.0, loud, r.speaking_rate, np.log(max(r.duration_s, 1e-3))]


def adapter_features(model, waves: list[np.ndarray]) -> np.ndarray:
    """What the emotion head reads: the adapter's output, mean-pooled over each clip."""
    from blsp_emo.model.model import masked_mean
    from blsp_emo.model.processor import clip_features

    features, counts = clip_features(waves, model.config)
    with torch.inference_mode():
        speech = model.encode_speech(features, counts)
        return masked_mean(speech.embeds, speech.lengths).float().numpy().astype(np.float64)


def read_clips(rows: list[dict], model=None, batch: int = 16) -> Clips:
    """Each clip decoded once, a batch at a time: its prosody readings, and with `model` the
    emotion head's input beside them."""
    from blsp_emo.audio import load_audio

    parts = []
    for i in range(0, len(rows), batch):
        waves = [load_audio(r["audio"]) for r in rows[i : i + batch]]
        prosody = np.asarray([prosody_features(w) for w in waves], dtype=np.float64)
        parts.append(prosody if model is None else np.concatenate([prosody, adapter_features(model, waves)], axis=1))
    features = np.concatenate(parts)
    if np.isnan(features).all(axis=0).any():
        raise ValueError("no clip of the set has a voiced frame: Praat reads no pitch in any of them")
    # A reading a clip lacks (no voiced frame) is the set's median: the clip says nothing there.
    features = np.where(np.isnan(features), np.nanmedian(features, axis=0), features)
    return Clips(
        features,
        np.array([EMOTIONS.index(r["emotion"]) for r in rows]),
        np.array([r["voice"] for r in rows]),
    )


def with_baseline(clips: Clips, turns: int | None, seed: int = 0) -> np.ndarray:
    """Each clip's features, joined by their difference from its voice's baseline (the median of
    `turns` other clips of the voice, drawn at random; None: all of them). 0 turns: the features."""
    if turns == 0:
        return clips.features
    rng = np.random.default_rng(seed)
    index = np.arange(len(clips.voices))
    baseline = np.empty_like(clips.features)
    for i, voice in enumerate(clips.voices):
        others = index[(clips.voices == voice) & (index != i)]
        if turns is not None and len(others) > turns:
            others = rng.choice(others, size=turns, replace=False)
        # A voice heard once has no earlier turns: the population's median stands in.
        source = clips.features[others] if len(others) else clips.features
        baseline[i] = np.median(source, axis=0)
    return np.concatenate([clips.features, clips.features - baseline], axis=1)


def fit_linear(x: np.ndarray, y: np.ndarray, seed: int = 0, weight_decay: float = 1e-4):
    """A logistic regression on standardised features: returns predict(x) -> labels."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], len(EMOTIONS))
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=weight_decay)
    inputs, targets = torch.tensor((x - mean) / scale, dtype=torch.float32), torch.tensor(y)
    for _ in range(FIT_STEPS):
        loss = torch.nn.functional.cross_entropy(head(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.tensor((z - mean) / scale, dtype=torch.float32)).argmax(1).numpy()

    return predict


def probe(train: Clips, evals: dict[str, Clips], turns: tuple[int | None, ...], seed: int = 0) -> list[dict]:
    """Accuracy on each evaluation set for each baseline size."""
    results = []
    for k in turns:
        predict = fit_linear(with_baseline(train, k, seed), train.labels, seed)
        for name, clips in evals.items():
            right = predict(with_baseline(clips, k, seed)) == clips.labels
            results.append(
                {"turns": "all" if k is None else k, "set": name, "accuracy": float(right.mean()), "n": len(right)}
            )
    return results


def subset(clips: Clips, columns: slice) -> Clips:
    return Clips(clips.features[:, columns], clips.labels, clips.voices)


def run(args: argparse.Namespace) -> int:
    turns = parse_turns(args.turns)
    model = None
    if args.model:  # loaded once, for every manifest
        from blsp_emo.model.checkpoint import load_model

        model = load_model(args.model)[0].eval()
    train = read_clips(manifest_rows(Path(args.train), args.every), model)
    evals = {str(p): read_clips(manifest_rows(Path(p)), model) for p in args.eval}
    groups = {"prosody": slice(0, len(PROSODY))}
    if model is not None:
        groups |= {"adapter": slice(len(PROSODY), None), "prosody+adapter": slice(None)}
    report = []
    for name, columns in groups.items():
        rows = probe(subset(train, columns), {k: subset(v, columns) for k, v in evals.items()}, turns, args.seed)
        report += [{"features": name, **r} for r in rows]
    for r in report:
        print(f"{r['features']:16} turns={r['turns']!s:4} {r['accuracy']:6.1%}  n={r['n']:4}  {r['set']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"train": args.train, "every": args.every, "results": report}, indent=1))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="manifest the probe's classifier is fitted on")
    p.add_argument("--every", type=int, default=1, help="take every N-th training row (default 1: all)")
    p.add_argument("--eval", action="append", required=True, help="a manifest to score (repeat the flag)")
    p.add_argument(
        "--turns", default="0,1,4,all", help="baseline sizes: counts of other clips, 'all' (default 0,1,4,all)"
    )
    p.add_argument("--model", help="a BLSP-Emo model folder: also probe the emotion head's input (its adapter output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the results as JSON here")
