"""Real human recordings for evaluation, and the same recordings re-rendered in each emotion.

`fetch_real_speech.sh DEST` fetches the recordings (docs/real_speech.md); `read_real(DEST)` lists
those whose words are known: the Asterisk telephone prompts (one US speaker, 8 kHz), the LibriVox
reading of the pocketsphinx test data and the JFK excerpt. None is ever trained on.

No emotional corpus is obtainable offline in English, so `rerender` imposes each emotion's
prosody (the table the corpora use, `prosody.py`) on a real recording with Praat PSOLA, neutral
included (so that PSOLA's own traces say nothing of the emotion). The voice, the room, the
microphone and the words stay a real person's; only pitch level and range, duration and energy
change. It is an honest check of whether a model learned the tone or the synthetic voices.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from blsp_emo.emotion import EMOTIONS

JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def read_real(folder: Path) -> list[dict]:
    """Every recording under `folder` (as fetched) whose transcript is known: audio, text, source."""
    rows = []
    notes = folder / "asterisk" / "core-sounds-en.txt"
    if notes.is_file():
        for line in notes.read_text(encoding="utf-8", errors="replace").splitlines():
            name, _, text = line.partition(":")
            audio = folder / "asterisk" / f"{name.strip()}.wav"
            if text.strip() and not line.startswith(";") and audio.is_file():
                rows.append({"audio": str(audio), "text": text.strip(), "source": "asterisk"})
    librivox = folder / "pocketsphinx" / "librivox.transcription"
    if librivox.is_file():
        for line in librivox.read_text().splitlines():
            m = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
            audio = folder / "pocketsphinx" / f"{m.group(2)}.wav" if m else None
            if m and audio.is_file():
                rows.append({"audio": str(audio), "text": m.group(1).strip(), "source": "librivox"})
    if (folder / "jfk" / "jfk.wav").is_file():
        rows.append({"audio": str(folder / "jfk" / "jfk.wav"), "text": JFK_TEXT, "source": "jfk"})
    return rows


def choose(rows: list[dict], n: int, seed: int = 0, min_words: int = 4) -> list[dict]:
    """`n` recordings of at least `min_words` words, drawn evenly from each source, seeded."""
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        if len(row["text"].split()) >= min_words:
            by_source.setdefault(row["source"], []).append(row)
    rng = random.Random(seed)
    for group in by_source.values():
        rng.shuffle(group)
    chosen, i = [], 0
    while len(chosen) < n and any(i < len(g) for g in by_source.values()):
        chosen += [g[i] for g in by_source.values() if i < len(g)][: n - len(chosen)]
        i += 1
    return chosen


def rerender(rows: list[dict], out: Path, seed: int = 0) -> Path:
    """Each recording in every emotion's prosody (drawn from the table's mean and jitter) into
    `out/wav/`, and `out/manifest.jsonl`; clips already written are kept."""
    import soundfile as sf

    from blsp_emo import prosody_shift
    from train.demo_world.acoustics import write_clip
    from train.demo_world.neural_voice import shift_for
    from train.demo_world.prosody import sample_setting

    lines = []
    for row in rows:
        stem = f"{row['source']}_{Path(row['audio']).stem}"
        samples = None
        for emotion in EMOTIONS:
            name = f"wav/{stem}_{emotion}.wav"
            if not (out / name).exists():
                if samples is None:
                    samples, rate = sf.read(row["audio"], dtype="float32", always_2d=True)
                    samples = samples.mean(axis=1)
                setting = sample_setting(emotion, random.Random(f"{seed}|{stem}|{emotion}"), amplitude=100)
                shifted = prosody_shift.apply(
                    rate, samples, shift_for(setting), clip=False, resynthesize=True, seed=seed
                )
                write_clip(out / name, rate, shifted)
            lines.append({"audio": name, "text": row["text"], "emotion": emotion, "voice": row["source"]})
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return out / "manifest.jsonl"
