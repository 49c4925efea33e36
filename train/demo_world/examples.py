"""Example clips for the page, named for the people who speak them: "Joe, sad: 'The parcel …'".

Three held-out speakers, each saying one held-out sentence (words without emotion) in all five
tones, at the table's mean prosody (no jitter): Joe, the neural voice, and two of espeak-ng's
reserved voices, Annie and Edward. No training clip was made with any of them or with these
sentences. `examples.json` lists each clip with its speaker, emotion and transcript, which the
page shows as the example's label.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from blsp_emo.emotion import EMOTIONS

PEOPLE = {"Annie": "en-us-nyc+Annie", "Edward": "en-gb-x-rp+edward"}  # reserved espeak-ng voices
EXAMPLES_FILE = "examples.json"


def held_out_sentences(n: int, seed: int = 0) -> list:
    from train.demo_world.sentences import generate

    return [s for s in generate(80, seed + 7, "eval", cue_fraction=0.0)][:n]


def write_examples(out: Path, seed: int = 0) -> list[dict]:
    """The clips and `examples.json` into `out`; returns the listed entries."""
    from blsp_emo.tts import piper_problem

    out.mkdir(parents=True, exist_ok=True)
    sentences = held_out_sentences(len(PEOPLE) + 1, seed)
    entries = []
    for (person, voice), sentence in zip(PEOPLE.items(), sentences):
        entries += _espeak_person(out, person, voice, sentence, seed)
    if not piper_problem():
        entries += _neural_person(out, "Joe", sentences[-1])
    (out / EXAMPLES_FILE).write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
    return entries


def _entry(path: Path, person: str, emotion: str, text: str) -> dict:
    return {
        "file": path.name,
        "speaker": person,
        "emotion": emotion,
        "text": text,
        "label": f"{person}, {emotion}: '{text}'",
    }


def _espeak_person(out: Path, person: str, voice: str, sentence, seed: int) -> list[dict]:
    from train.demo_world import synth
    from train.demo_world.voices import check_voices

    tmp = out / f".render-{person}"
    synth.synthesize(
        synth.plan([sentence], check_voices([voice], evaluation=True), seed=seed, jitter=0.0), tmp, verbose=False
    )
    entries = []
    for line in (tmp / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        path = out / f"{person.lower()}_{row['emotion']}.wav"
        shutil.copy2(tmp / row["audio"], path)
        entries.append(_entry(path, person, row["emotion"], sentence.text))
    shutil.rmtree(tmp)
    return entries


def _neural_person(out: Path, person: str, sentence) -> list[dict]:
    from train.demo_world.acoustics import write_clip
    from train.demo_world.neural_voice import render

    entries = []
    for emotion in EMOTIONS:
        rate, audio = render(sentence.text, emotion, random.Random(0), jitter=0.0)
        path = out / f"{person.lower()}_{emotion}.wav"
        write_clip(path, rate, audio)
        entries.append(_entry(path, person, emotion, sentence.text))
    return entries
