"""Emotional speech from espeak-ng: `python -m train synth --sentences FILE --voices V1,V2 --out DIR`.

The emotion is carried by prosody alone: each clip is one sentence spoken by one voice with the
SSML `<prosody pitch range rate volume>` of its emotion (`PROSODY`), every value jittered per
utterance so the classes overlap as in real speech. All offsets are relative to the voice's own
baseline, so a deep voice's "happy" can sit below a high voice's "neutral" in absolute pitch;
only the relation between cues, not one number, gives the emotion away.

Writes `DIR/wav/{sentence id}_{accent}_{variant}_{emotion}.wav` (16 kHz mono PCM-16) and
`DIR/manifest.jsonl` with `audio` (relative to DIR), `text`, `emotion`, `voice`, `sentence_id`,
`cue` and `prosody` (the values applied). Plain sentences are rendered in every emotion by every
voice; a sentence with a lexical cue is rendered once per voice, in its cue's tone with
probability `--cue-match` (default 0.8) and in another emotion otherwise, so words help a text
model where they speak without ever settling the answer. Runs are seeded (the same seed gives
the same files) and resumable (clips already on disk with the same text and prosody are kept).

Voices are espeak-ng specs `accent+variant` (`en-us+m3`). Evaluation voices (`RESERVED_*`) never
train: they are refused unless `--eval` is given, and `--eval` refuses every other voice.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from blsp_emo.audio import SAMPLE_RATE
from blsp_emo.emotion import EMOTIONS
from train.demo_world import speakers
from train.demo_world.sentences import Sentence, read_sentences


@dataclass(frozen=True)
class Knob:
    mean: float  # percent offset from the voice's baseline (SSML relative value)
    jitter: float  # half-width of the uniform per-utterance jitter, in the same percent


@dataclass(frozen=True)
class Prosody:
    """One emotion's tone as SSML `<prosody>` offsets (see the module table in `PROSODY`)."""

    pitch: Knob  # mean f0 (espeak's pitch scale: +50 % is about +4 semitones)
    pitch_range: Knob  # f0 excursion around the mean (espeak caps it at +100 %)
    rate: Knob  # speaking rate (+100 % doubles the words per minute)
    volume: Knob  # amplitude (+100 % doubles it, about +6 dB)


# Vocal-affect profiles after Juslin & Laukka (2003, Table 7) and Scherer (2003): anger raises
# intensity most, with fast rate and raised pitch; happiness raises pitch and widens its range
# with a faster rate; sadness lowers pitch, narrows range, slows and softens; surprise has the
# highest pitch and widest range. Jitter widths make neighbours overlap on every single cue.
PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(pitch=Knob(0, 10), pitch_range=Knob(0, 20), rate=Knob(0, 8), volume=Knob(0, 12)),
    "happy": Prosody(pitch=Knob(30, 12), pitch_range=Knob(45, 20), rate=Knob(18, 8), volume=Knob(15, 12)),
    "angry": Prosody(pitch=Knob(20, 12), pitch_range=Knob(15, 20), rate=Knob(25, 8), volume=Knob(70, 20)),
    "sad": Prosody(pitch=Knob(-30, 10), pitch_range=Knob(-55, 15), rate=Knob(-25, 8), volume=Knob(-35, 12)),
    "surprise": Prosody(pitch=Knob(55, 12), pitch_range=Knob(90, 10), rate=Knob(3, 8), volume=Knob(15, 12)),
}
# Sampled values are clipped to these. espeak-ng caps range at +100 % (measured); the other
# bounds stay clear of its 80 wpm floor (rate) and of f0 below what `measure` tracks (pitch).
LIMITS = {"pitch": (-60, 120), "pitch_range": (-100, 100), "rate": (-50, 100), "volume": (-80, 150)}

# Evaluation voices (issue 5): never used for training.
RESERVED_ACCENTS = frozenset({"en-029", "en-gb-x-gbcwmd"})
RESERVED_VARIANTS = frozenset({"f5", "m8", "annie", "edward"})  # compared lower-cased
# Training voices: every training accent crossed with every espeak-ng variant that speaks with a
# human pitch contour (426 voices; `train/demo_world/speakers.py` adds generated speakers and accents). The
# variants span 66-347 Hz at neutral and their own pitch ranges up to 35 semitones (`--measure`), so
# no held-out voice is out of range on pitch level. Left out: the reserved ones and `edward2`
# (a sibling of the reserved `edward`), those without a normal voice source (whisper, whisperf,
# croak), the robot and echo effects (robosoft*, UniRobot, anikaRobot, Demonic, RicishayMax*),
# `fast` (speaks as no variant), names with a space, and renders identical to a kept variant
# (caleb and klatt6 are klatt; iven2-4 and steph3 differ from iven and steph2 in loudness only).
TRAIN_ACCENTS = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan")
TRAIN_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "AnxiousAndy",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mario",
    "Michael",
    "Mike",
    "Nguyen",
    "Storm",
    "Tweaky",
    "adam",
    "anika",
    "announcer",
    "antonio",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "david",
    "ed",
    "grandma",
    "grandpa",
    "gustave",
    "iven",
    "john",
    "kaukovalta",
    "linda",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "sandro",
    "shelby",
    "steph",
    "steph2",
    "travis",
    "victor",
    "zac",
)
TRAIN_VOICES = tuple(f"{accent}+{variant}" for variant in TRAIN_VARIANTS for accent in TRAIN_ACCENTS)
EVAL_VOICES = (
    "en-029+m3",
    "en-gb-x-gbcwmd+f2",
    "en-us+f5",
    "en-gb+m8",
    "en-us-nyc+Annie",
    "en-gb-x-rp+edward",
)
TARGET_RMS = 0.04  # every voice's neutral loudness, so volume means the same for every speaker
CALIBRATION_TEXT = "The letter from the office is on the kitchen table."


class VoiceError(ValueError):
    """A voice spec is unknown to espeak-ng or not allowed here; the message gives the fix."""


class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed on one clip."""


# --- voices -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    accent: str  # espeak-ng language code, lower-case: en-us, en-gb-x-rp, ...
    variant: str | None  # espeak-ng variant file name (case matters): m3, f2, klatt2, Annie

    @classmethod
    def parse(cls, spec: str) -> Voice:
        accent, _, variant = spec.strip().partition("+")
        if not accent:
            raise VoiceError(f"voice {spec!r} has no accent; write accent+variant, e.g. en-us+m3")
        return cls(accent.lower(), variant or None)

    @property
    def spec(self) -> str:
        return f"{self.accent}+{self.variant}" if self.variant else self.accent

    @property
    def slug(self) -> str:
        """The spec as a file-name part: en-us+m3 -> en-us_m3."""
        return re.sub(r"[^A-Za-z0-9-]+", "_", self.spec)

    @property
    def espeak(self) -> str:
        """The `-v` argument. It names the voice file (gmw/en), since espeak-ng drops the variant
        of an alias (en-gb+f3 speaks as en-gb)."""
        path = _accent_file(self)
        return f"{path}+{self.variant}" if self.variant else path


def is_reserved(voice: str | Voice) -> bool:
    """Whether `voice` belongs to the evaluation speakers (issue 5 protocol)."""
    voice = Voice.parse(voice) if isinstance(voice, str) else voice
    return voice.accent in RESERVED_ACCENTS or (voice.variant or "").lower() in RESERVED_VARIANTS


def _data_path() -> str | None:
    """espeak-ng's own ESPEAK_DATA_PATH (generated speakers live there, `train/demo_world/speakers.py`)."""
    return os.environ.get("ESPEAK_DATA_PATH")


def espeak_accents() -> dict[str, str]:
    """English accents espeak-ng can speak -> voice file (mbrola voices excluded: they need MBROLA)."""
    return _accents(_data_path())


@cache
def _accents(data_path: str | None) -> dict[str, str]:
    accents = {}
    for row in _espeak_listing("--voices=en"):
        path = next((word for word in row.split() if word.startswith("gmw/")), None)
        if path is not None:
            accents[row.split()[1].lower()] = path
            accents[path.split("/")[-1].lower()] = path  # "en" names British English's file
    return accents


def espeak_variants() -> frozenset[str]:
    """Variant names usable after `+` (the file names under `!v/`, case-sensitive)."""
    return _variants(_data_path())


@cache
def _variants(data_path: str | None) -> frozenset[str]:
    rows = _espeak_listing("--voices=variant")
    return frozenset(row.split("!v/", 1)[1].split(" (")[0].strip() for row in rows if "!v/" in row)


def _espeak_listing(option: str) -> list[str]:
    out = subprocess.run([_espeak_binary(), option], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[1:]  # after the header


def _espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if found is None:
        raise SynthesisError("espeak-ng is not installed: `apt-get install espeak-ng` (it is in packages.txt)")
    return found


def check_voices(specs: Iterable[str], evaluation: bool = False) -> list[Voice]:
    """Parse and verify voice specs; reserved voices only with `evaluation`, and only they then.

    espeak-ng silently falls back to its default voice on an unknown accent or variant, so the
    names are checked against its own listings here rather than trusted.
    """
    voices = [Voice.parse(spec) for spec in specs if spec.strip()]
    if not voices:
        raise VoiceError("no voices given; pass --voices accent+variant,... (e.g. en-us+m3)")
    for voice in voices:
        _check_known(voice)
        if evaluation and not is_reserved(voice):
            raise VoiceError(
                f"--eval makes a speaker-independent test set, but {voice.spec} is a training voice; "
                f"use reserved voices (accent {sorted(RESERVED_ACCENTS)} or variant f5, m8, Annie, edward)"
            )
        if not evaluation and is_reserved(voice):
            raise VoiceError(f"{voice.spec} is reserved for evaluation; drop it from --voices, or pass --eval")
    if len({v.spec for v in voices}) != len(voices):
        raise VoiceError(f"--voices repeats a voice: {[v.spec for v in voices]}")
    return voices


def _accent_file(voice: Voice) -> str:
    path = espeak_accents().get(voice.accent)
    if path is None:
        raise VoiceError(f"unknown accent {voice.accent!r} in {voice.spec!r}; espeak-ng has {sorted(espeak_accents())}")
    return path


def _check_known(voice: Voice) -> None:
    _accent_file(voice)
    if voice.variant is not None and voice.variant not in espeak_variants():
        near = [v for v in espeak_variants() if v.lower() == voice.variant.lower()]
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise VoiceError(
            f"unknown variant {voice.variant!r} in {voice.spec!r}; {hint}`espeak-ng --voices=variant` lists them"
        )


# --- prosody ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """The prosody applied to one clip: SSML percent offsets plus espeak's `-a` amplitude."""

    pitch: int
    pitch_range: int
    rate: int
    volume: int
    amplitude: int  # per-voice calibration (`voice_amplitude`), the same for every emotion


def sample_setting(emotion: str, rng: random.Random, amplitude: int, jitter: float = 1.0) -> Setting:
    """`emotion`'s table values, each moved by uniform jitter scaled by `jitter` (0: the means)."""
    if emotion not in PROSODY:
        raise ValueError(f"unknown emotion {emotion!r}; choose from {EMOTIONS}")
    values = {}
    for name, knob in vars(PROSODY[emotion]).items():
        low, high = LIMITS[name]
        value = knob.mean + jitter * rng.uniform(-knob.jitter, knob.jitter)
        values[name] = int(round(min(max(value, low), high)))
    return Setting(**values, amplitude=amplitude)


def voice_amplitude(espeak_voice: str) -> int:
    """espeak `-a` that gives `espeak_voice` the neutral loudness TARGET_RMS (variants differ ~2x)."""
    return _amplitude(espeak_voice, _data_path())


@cache
def _amplitude(espeak_voice: str, data_path: str | None) -> int:
    neutral = Setting(0, 0, 0, 0, amplitude=100)
    rms = measure(render(CALIBRATION_TEXT, espeak_voice, neutral)).rms
    return int(round(min(max(100 * TARGET_RMS / rms, 10), 200)))  # -a is linear in amplitude


def render(text: str, espeak_voice: str, setting: Setting) -> np.ndarray:
    """Speak `text`: (T,) float32 at SAMPLE_RATE. `espeak_voice` is a `-v` argument (`Voice.espeak`)."""
    import librosa
    import soundfile as sf

    ssml = (
        f'<speak><prosody pitch="{setting.pitch:+d}%" range="{setting.pitch_range:+d}%" '
        f'rate="{setting.rate:+d}%" volume="{setting.volume:+d}%">{escape(text)}</prosody></speak>'
    )
    fd, tmp = tempfile.mkstemp(suffix=".wav", prefix="espeak-")
    os.close(fd)
    try:
        cmd = [_espeak_binary(), "-m", "-v", espeak_voice, "-a", str(setting.amplitude), "-w", tmp, ssml]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise SynthesisError(f"espeak-ng failed on {text!r} with voice {espeak_voice}: {done.stderr.strip()}")
        samples, rate = sf.read(tmp, dtype="float32")
    finally:
        os.unlink(tmp)
    samples = librosa.resample(samples, orig_sr=rate, target_sr=SAMPLE_RATE) if rate != SAMPLE_RATE else samples
    return np.clip(samples, -1.0, 1.0).astype(np.float32)  # resampling can overshoot by a hair


# --- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Acoustics:
    duration_s: float
    f0_hz: float  # median f0 over voiced frames
    f0_range_st: float  # 5th to 95th percentile of f0, in semitones
    rms: float  # root mean square over frames above 5 % of the loudest


def measure(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Acoustics:
    """What a listener hears of the prosody, from (T,) samples. Uses yin (ms) rather than pyin (s)."""
    import librosa
    import scipy.signal

    frame, hop = 640, 160  # 40 ms windows hold two periods of fmin (55 Hz); 10 ms hop
    f0 = librosa.yin(samples, fmin=55, fmax=500, sr=sample_rate, frame_length=frame, hop_length=hop)
    rms = librosa.feature.rms(y=samples, frame_length=frame, hop_length=hop)[0]
    zcr = librosa.feature.zero_crossing_rate(samples, frame_length=frame, hop_length=hop)[0]
    n = min(len(f0), len(rms))
    f0, rms, zcr = f0[:n], rms[:n], zcr[:n]
    voiced = (rms > 0.1 * rms.max()) & (zcr < 0.2)  # yin reports a pitch for every frame, even /s/
    f0 = scipy.signal.medfilt(f0, 5)[voiced]  # the median filter removes single-frame octave jumps
    semitones = 12 * np.log2(f0) if f0.size else np.zeros(1)
    active = rms > 0.05 * rms.max()
    return Acoustics(
        duration_s=round(samples.size / sample_rate, 3),
        f0_hz=round(float(np.median(f0)) if f0.size else 0.0, 1),
        f0_range_st=round(float(np.percentile(semitones, 95) - np.percentile(semitones, 5)), 2),
        rms=round(float(np.sqrt(np.mean(rms[active] ** 2))) if active.any() else 0.0, 4),
    )


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
            for emotion in _emotions_for(sentence, voice, emotions, seed, cue_match):
                rng = random.Random(f"{seed}|{sentence.id}|{voice.spec}|{emotion}")
                amplitude = voice_amplitude(voice.espeak)  # cached; only the voices drawn are calibrated
                clips.append(Clip(sentence, voice, emotion, sample_setting(emotion, rng, amplitude, jitter)))
    return clips


def _emotions_for(sentence: Sentence, voice: Voice, emotions: Sequence[str], seed: int, cue_match: float) -> list[str]:
    """All emotions for a plain sentence; one for a cue sentence, its cue with probability cue_match."""
    if sentence.cue is None:
        return list(emotions)
    rng = random.Random(f"{seed}|{sentence.id}|{voice.spec}|cue")
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

MEASURE_TEXT = "I got the letter from the office today and put it on the kitchen table."


def measure_table(voices: Sequence[Voice], text: str = MEASURE_TEXT) -> list[dict]:
    """Acoustics of `text` in each emotion (table means, no jitter) for each voice, with the change
    from that voice's neutral: duration and RMS as ratios, f0 and its range in semitones."""
    rows = []
    for voice in voices:
        amplitude = voice_amplitude(voice.espeak)
        base = None
        for emotion in EMOTIONS:
            setting = sample_setting(emotion, random.Random(0), amplitude, jitter=0.0)
            got = measure(render(text, voice.espeak, setting))
            base = base or got
            rows.append(
                {
                    "voice": voice.spec,
                    "emotion": emotion,
                    **asdict(got),
                    "duration_x": round(got.duration_s / base.duration_s, 2),
                    "f0_st": round(12 * float(np.log2(got.f0_hz / base.f0_hz)), 1),
                    "range_st": round(got.f0_range_st - base.f0_range_st, 1),
                    "rms_x": round(got.rms / base.rms, 2),
                }
            )
    return rows


def _print_table(rows: list[dict]) -> None:
    keys = ("voice", "emotion", "duration_s", "f0_hz", "f0_range_st", "rms", "duration_x", "f0_st", "range_st", "rms_x")
    print("\t".join(keys))
    for row in rows:
        print("\t".join(str(row[k]) for k in keys))
    for emotion in EMOTIONS:
        mine = [r for r in rows if r["emotion"] == emotion]
        means = {k: round(float(np.mean([r[k] for r in mine])), 4 if k == "rms" else 2) for k in keys[2:]}
        print("\t".join(["mean", emotion, *(str(means[k]) for k in keys[2:])]))


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
