"""Emotional speech from espeak-ng: `python -m train synth --sentences FILE --voices V1,V2 --out DIR`.

The emotion is carried by prosody alone: each clip is one sentence spoken by one voice with the
SSML `<prosody pitch range rate volume>` of its emotion (`PROSODY` in `prosody.py`), every value
jittered per utterance so the classes overlap as in real speech. All offsets are relative to the
voice's own baseline, so a deep voice's "happy" can sit below a high voice's "neutral" in absolute
pitch; only the relation between cues, not one number, gives the emotion away.

Writes `DIR/wav/{sentence id}_{accent}_{variant}_{emotion}.wav` (16 kHz mono PCM-16) and
`DIR/manifest.jsonl` with `audio` (relative to DIR), `text`, `emotion`, `voice`, `sentence_id`,
`cue` and `prosody` (the values applied). Plain sentences are rendered in every emotion by every
voice; a sentence with a lexical cue is rendered once per voice, in its cue's tone with
probability `--cue-match` (default 0.8) and in another emotion otherwise, so words help a text
model where they speak without ever settling the answer. Runs are seeded (the same seed gives
the same files) and resumable (clips already on disk with the same text and prosody are kept).

Voices are espeak-ng specs `accent+variant` (`en-us+m3`). Evaluation voices (`RESERVED_*` in
`voices.py`) never train: they are refused unless `--eval` is given, and `--eval` refuses every
other voice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from blsp_emo.audio import SAMPLE_RATE
from blsp_emo.emotion import EMOTIONS
from train.demo_world import speakers
from train.demo_world.prosody import Setting, measure_table, render, sample_setting, voice_amplitude
from train.demo_world.sentences import Sentence, read_sentences
from train.demo_world.voices import EVAL_VOICES, TRAIN_ACCENTS, TRAIN_VOICES, SynthesisError, Voice, check_voices

# --- the corpus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    sentence: Sentence
    voice: Voice
    emotion: str
    setting: Setting

    @property
    def audio(self) -> str:
        """Path relative to the output folder; the name says what the clip is."""
        return f"wav/{self.sentence.id}_{self.voice.slug}_{self.emotion}.wav"

    def row(self) -> dict:
        return {
            "audio": self.audio,
            "text": self.sentence.text,
            "emotion": self.emotion,
            "voice": self.voice.spec,
            "sentence_id": self.sentence.id,
            "cue": self.sentence.cue,
            "prosody": asdict(self.setting),
        }


def plan(
    sentences: Sequence[Sentence],
    voices: Sequence[Voice],
    emotions: Sequence[str] = EMOTIONS,
    seed: int = 0,
    jitter: float = 1.0,
    cue_match: float = 0.8,
    voices_per_sentence: int | None = None,
) -> list[Clip]:
    """Every clip to make, in manifest order. Each clip's randomness is seeded by its own name,
    so the result does not depend on order, workers, or which clips already exist.

    `voices_per_sentence` K speaks each sentence with K voices drawn for it (all by default), which
    keeps a corpus of many sentences small while every plain sentence still gets all five tones.
    """
    if voices_per_sentence is not None and not 1 <= voices_per_sentence <= len(voices):
        raise ValueError(f"voices_per_sentence must be in 1..{len(voices)}, got {voices_per_sentence}")
    clips = []
    for sentence in sentences:
        chosen = voices
        if voices_per_sentence is not None:
            chosen = random.Random(f"{seed}|{sentence.id}|voices").sample(list(voices), voices_per_sentence)
        for voice in chosen:
            for emotion in emotions_for(sentence, voice.spec, emotions, seed, cue_match):
                rng = random.Random(f"{seed}|{sentence.id}|{voice.spec}|{emotion}")
                amplitude = voice_amplitude(voice.espeak)  # cached; only the voices drawn are calibrated
                clips.append(Clip(sentence, voice, emotion, sample_setting(emotion, rng, amplitude, jitter)))
    return clips


def emotions_for(
    sentence: Sentence, voice: str, emotions: Sequence[str], seed: int, cue_match: float = 0.8
) -> list[str]:
    """All emotions for a plain sentence; one for a cue sentence, its cue with probability cue_match."""
    if sentence.cue is None:
        return list(emotions)
    rng = random.Random(f"{seed}|{sentence.id}|{voice}|cue")
    if sentence.cue in emotions and rng.random() < cue_match:
        return [sentence.cue]
    others = [e for e in emotions if e != sentence.cue] or list(emotions)
    return [rng.choice(others)]


def synthesize(clips: Sequence[Clip], out_dir: str | Path, workers: int = 2, verbose: bool = True) -> dict:
    """Render the missing clips into `out_dir/wav/` and write `out_dir/manifest.jsonl`.

    Returns counts: clips, rendered, kept (already on disk with the same text and prosody).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.jsonl"
    previous = _previous_rows(manifest)
    todo = [clip for clip in clips if not _is_done(clip, out_dir, previous)]
    # Threads suffice: the work is in espeak-ng subprocesses and libsoxr, outside the GIL.
    with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(todo), unit="clip", disable=not verbose) as bar:
        for _ in pool.map(lambda clip: _write_clip(clip, out_dir), todo):
            bar.update()
    tmp = manifest.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for clip in clips:
            f.write(json.dumps(clip.row()) + "\n")
    os.replace(tmp, manifest)  # a reader never sees half a manifest
    return {"clips": len(clips), "rendered": len(todo), "kept": len(clips) - len(todo), "manifest": str(manifest)}


def _previous_rows(manifest: Path) -> dict[str, dict]:
    if not manifest.is_file():
        return {}
    rows = (json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
    return {row["audio"]: row for row in rows}


def _is_done(clip: Clip, out_dir: Path, previous: dict[str, dict]) -> bool:
    if not (out_dir / clip.audio).is_file():
        return False
    # A clip left by an interrupted run has no manifest row yet: trust it (same command, same seed).
    old = previous.get(clip.audio)
    return old is None or (old.get("text"), old.get("prosody")) == (clip.sentence.text, asdict(clip.setting))


def _write_clip(clip: Clip, out_dir: Path) -> None:
    import soundfile as sf

    samples = render(clip.sentence.text, clip.voice.espeak, clip.setting)
    if samples.size < SAMPLE_RATE // 4 or float(np.sqrt(np.mean(samples**2))) < 1e-3:
        raise SynthesisError(f"espeak-ng gave silence for {clip.audio} ({clip.sentence.text!r}); check voice and text")
    path = out_dir / clip.audio
    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)  # an interrupted run never leaves a truncated WAV under the final name


# --- measuring the table ------------------------------------------------------------------------


def _print_table(rows: list[dict]) -> None:
    keys = ("voice", "emotion", "duration_s", "f0_hz", "f0_range_st", "rms", "tilt_db")
    keys += ("duration_x", "f0_st", "range_st", "rms_x", "tilt_change_db")
    print("\t".join(keys))
    for row in rows:
        print("\t".join(str(row[k]) for k in keys))
    for emotion in EMOTIONS:
        mine = [r for r in rows if r["emotion"] == emotion]
        means = {k: round(float(np.mean([r[k] for r in mine])), 4 if k == "rms" else 2) for k in keys[2:]}
        print("\t".join(["mean", emotion, *(str(means[k]) for k in keys[2:])]))
    neutral = [r["tilt_db"] for r in rows if r["emotion"] == "neutral"]
    print(f"voices' neutral tilt_db: sd {np.std(neutral):.2f} dB over {len(neutral)} voices")


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m train synth`."""
    add = parser.add_argument
    add("--sentences", help="from `python -m train sentences` (JSON lines), or plain text one per line")
    add(
        "--voices",
        help=f"comma-separated accent+variant (default: the {len(TRAIN_VOICES)} voices of "
        f"TRAIN_ACCENTS x TRAIN_VARIANTS; with --eval: {','.join(EVAL_VOICES)})",
    )
    add(
        "--speakers",
        type=int,
        default=0,
        metavar="N",
        help="add N generated speakers (train/demo_world/speakers.py), written under OUT/espeak-speakers",
    )
    add(
        "--accents",
        type=int,
        default=0,
        metavar="N",
        help="with --speakers: also N generated accents, recombined from the training accents' parts",
    )
    add(
        "--accents-per-speaker",
        type=int,
        default=1,
        metavar="K",
        help="with --speakers: each generated speaker speaks with K accents drawn for it (default 1)",
    )
    add("--out", help="folder for manifest.jsonl and wav/")
    add(
        "--eval",
        action="store_true",
        help="make a test set: only reserved voices (accent en-029, en-gb-x-gbcwmd; variant f5, m8, Annie, edward)",
    )
    add("--emotions", default=",".join(EMOTIONS), help="comma-separated subset (default: all five)")
    add("--seed", type=int, default=0, help="seeds the jitter and the cue sentences' emotions")
    add("--jitter", type=float, default=1.0, help="scale of the per-utterance jitter (0: the table means)")
    add("--cue-match", type=float, default=0.8, help="chance that a cue sentence is spoken in its cue's tone")
    add(
        "--voices-per-sentence",
        type=int,
        default=None,
        metavar="K",
        help="speak each sentence with K voices drawn for it (default: every voice)",
    )
    add("--workers", type=int, default=2, help="clips rendered at once")
    add("--quiet", action="store_true", help="no progress bar")
    add("--measure", action="store_true", help="print each emotion's acoustics per voice (no jitter) and exit")


def run(args: argparse.Namespace) -> int:
    """Make the corpus (or print the prosody measurements) and print a one-line JSON summary."""
    specs = args.voices.split(",") if args.voices else list(EVAL_VOICES if args.eval else TRAIN_VOICES)
    data_path = None
    if args.accents and not args.speakers:
        raise ValueError("--accents needs --speakers: generated accents are spoken only by generated speakers")
    if args.speakers:
        if args.eval or not args.out:
            raise ValueError("--speakers adds training speakers: it needs --out DIR and cannot go with --eval")
        data_path = Path(args.out) / "espeak-speakers"
        names = speakers.write_speakers(data_path, args.speakers, args.seed, args.accents)
        specs += speakers.speaker_voices(
            names, (*TRAIN_ACCENTS, *speakers.generated_accents(data_path)), args.seed, args.accents_per_speaker
        )
    with speakers.espeak_data(data_path):
        return _run(args, check_voices(specs, evaluation=args.eval))


def _run(args: argparse.Namespace, voices: list[Voice]) -> int:
    if args.measure:
        _print_table(measure_table(voices))
        return 0
    if not args.sentences or not args.out:
        raise ValueError("--sentences FILE and --out DIR are required (or pass --measure)")
    emotions = _emotions(args.emotions)
    if not 0.0 <= args.cue_match <= 1.0 or args.jitter < 0:
        raise ValueError(f"--cue-match must be in [0, 1] and --jitter >= 0; got {args.cue_match}, {args.jitter}")
    start = time.perf_counter()
    clips = plan(
        read_sentences(args.sentences),
        voices,
        emotions,
        args.seed,
        args.jitter,
        args.cue_match,
        args.voices_per_sentence,
    )
    summary = synthesize(clips, args.out, args.workers, verbose=not args.quiet)
    print(json.dumps({**summary, "voices": [v.spec for v in voices], "seconds": round(time.perf_counter() - start, 1)}))
    return 0


def _emotions(text: str) -> list[str]:
    emotions = [e.strip() for e in text.split(",") if e.strip()]
    unknown = [e for e in emotions if e not in EMOTIONS]
    if unknown or not emotions:
        raise ValueError(f"--emotions {text!r}: {unknown or 'none given'}; choose from {','.join(EMOTIONS)}")
    return emotions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, SynthesisError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
