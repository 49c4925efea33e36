"""`python -m train ablate`: which part of a voice does a system take for emotion?

Renders sentences in every emotion with one voice as it is and with named settings removed from
its espeak-ng files, and scores what a system hears in each version:

    python -m train ablate --voice en-029+m3 --drop accent:replace --drop accent:phonemes \\
        --sentences runs/demo/sentences_eval.jsonl --clips 16

`--drop accent:KEY,KEY` removes lines from the accent's language file, `variant:KEY,KEY` from the
variant file (keys are espeak-ng voice keywords: replace, phonemes, stressLength, formant, breath,
echo, voicing, consonants, stressAdd, pitch, ...). The ablated copies live in a temporary data
folder and are only listened to: nothing here writes a training corpus, so reserved voices may be
ablated. Prosody is the emotion table's, jittered per clip with a fixed seed, as in `synth`.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from blsp_emo.emotion import EMOTIONS
from train.demo_world import prosody, speakers, voices
from train.demo_world.sentences import read_sentences


@dataclass(frozen=True)
class Drop:
    part: str  # "accent" or "variant"
    keys: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Drop:
        part, _, keys = text.partition(":")
        names = tuple(k.strip() for k in keys.split(",") if k.strip())
        if part not in ("accent", "variant") or not names:
            raise ValueError(f"--drop {text!r}: write accent:KEY[,KEY] or variant:KEY[,KEY], e.g. accent:replace")
        return cls(part, names)

    @property
    def label(self) -> str:
        return f"without {self.part} {','.join(self.keys)}"


def _without(source: Path, target: Path, name: str, keys: tuple[str, ...], header: tuple[str, ...]) -> None:
    kept = [
        line
        for line in source.read_text().splitlines()
        if line.split()[:1] not in [[k] for k in (*keys, "name", "language")]
    ]
    target.write_text("\n".join([*header, f"name {name}", *kept]) + "\n")


def ablated_voice(data: Path, voice: voices.Voice, drop: Drop, index: int) -> str:
    """Write the ablated copy of `voice` into the data folder `data`; its espeak `-v` argument."""
    root = data / speakers.DATA_FOLDER
    accent_file, variant = voice.espeak.split("+")[0], voice.variant
    if drop.part == "accent":
        name = f"en-x-ablated{index:02d}"
        _without(root / "lang" / accent_file, root / "lang" / "gmw" / name, name, drop.keys, (f"language {name}",))
        accent_file = f"gmw/{name}"
    else:
        if variant is None:
            raise ValueError(f"--drop {drop.part}:...: {voice.spec} has no variant to ablate")
        name = f"ablated{index:02d}"
        _without(
            root / "voices" / "!v" / variant, root / "voices" / "!v" / name, name, drop.keys, ("language variant",)
        )
        variant = name
    return f"{accent_file}+{variant}" if variant else accent_file


def score_voice(system, espeak_voice: str, texts: list[str], seed: int = 0) -> dict[str, float]:
    """Share of clips per emotion whose heard emotion is the one spoken."""
    from blsp_emo.decoding.generation import GenerationOptions

    options = GenerationOptions(greedy=True, max_new_tokens=1, seed=0)
    amplitude = prosody.voice_amplitude(espeak_voice)
    scores = {}
    for emotion in EMOTIONS:
        hits = 0
        for i, text in enumerate(texts):
            setting = prosody.sample_setting(emotion, random.Random(f"{seed}|{i}|{emotion}"), amplitude)
            hits += system.respond(prosody.render(text, espeak_voice, setting), options=options).emotion == emotion
        scores[emotion] = hits / len(texts)
    return scores


def run(args: argparse.Namespace) -> int:
    from blsp_emo.systems import load_system

    voice = voices.Voice.parse(args.voice)
    voices.check_voices([voice.spec], evaluation=voices.is_reserved(voice))
    if args.clips < 1:
        raise ValueError(f"--clips must be >= 1 sentence per emotion, got {args.clips}")
    drops = [Drop.parse(text) for text in args.drop]
    texts = [s.text for s in read_sentences(args.sentences)][: args.clips]
    if not texts:
        raise ValueError(f"{args.sentences} holds no sentences")
    system = load_system(args.system, model=args.model)
    if system.emotion_source is None:
        raise ValueError(f"system {args.system!r} reports no emotion; use blsp-emo or cascade-ser")
    rows = [{"voice": voice.spec, "version": "as is", **score_voice(system, voice.espeak, texts, args.seed)}]
    with tempfile.TemporaryDirectory(prefix="ablate-") as tmp:
        speakers.write_speakers(Path(tmp), 0)
        with speakers.espeak_data(Path(tmp)):
            for i, drop in enumerate(drops):
                espeak = ablated_voice(Path(tmp), voice, drop, i)
                rows.append(
                    {"voice": voice.spec, "version": drop.label, **score_voice(system, espeak, texts, args.seed)}
                )
    if args.json:
        print(json.dumps({"system": system.name, "clips_per_emotion": len(texts), "rows": rows}))
    else:
        print(f"{system.name}: share heard right, {len(texts)} clips per emotion")
        print("| version | " + " | ".join(EMOTIONS) + " |\n|---|" + "---|" * len(EMOTIONS))
        for row in rows:
            print(f"| {row['version']} | " + " | ".join(f"{row[e]:.2f}" for e in EMOTIONS) + " |")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voice", required=True, help="espeak-ng spec accent+variant, e.g. en-029+m3")
    p.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="PART:KEYS",
        help="accent:KEY[,KEY] or variant:KEY[,KEY]; repeat for several versions",
    )
    p.add_argument("--sentences", required=True, help="sentences file (`python -m train sentences`)")
    p.add_argument("--clips", type=int, default=16, help="sentences per emotion (default 16)")
    p.add_argument("--system", default="blsp-emo", help="a system that reports the emotion it hears")
    p.add_argument("--model", help="bundle or model folder (default: the bundled demo models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
