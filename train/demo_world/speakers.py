"""Generated speakers: espeak-ng voice variants drawn at random, so the corpus has hundreds of voices.

espeak-ng ships about 70 usable variants. A model trained on them alone learned their quirks as
emotion: the held-out `f5` and `en-029` voices were heard one step "up" in arousal, neutral as
surprise and happy as angry, and `python -m train ablate` traced it to f5's breath, echo and voicing
and to en-029's phoneme replacements. These are properties of a speaker, not of an emotion, so the
training corpus varies them per speaker, and per accent (`_write_accents`).

Each generated speaker is a variant file (`voices/!v/spkNNNN`) in a copy of espeak-ng's data folder,
used through espeak-ng's own `ESPEAK_DATA_PATH`. The values are drawn from the table below, inside
the span of espeak-ng's shipped non-reserved variants (a build with the bounds widened to all of that
span did no better); nothing is fitted to the evaluation voices, which stay unheard.

| setting | drawn | what it changes |
|---|---|---|
| pitch | base 60-230 (log-uniform), top = base x 1.2-1.9 | f0 level and natural range |
| formant 0-8 | frequency = tract x (0.96-1.04), tract 0.88-1.15; height 75-125; width 80-150 | timbre, vocal-tract length |
| stressAdd | half the speakers: 8 values in -20..50 | how much longer stressed syllables are |
| stressLength | half the speakers: unstressed 120-200, stressed 160-240, final 230-320 | rhythm (stress- vs syllable-timed) |
| consonants | 50-150, 50-150 | consonant loudness against vowels |
| voicing | 50-160 | voiced-source loudness |
| breath | a quarter: 8 values in 0-6 | breathiness |
| echo | a third: delay 0-140 ms, 0-15 % | room |
| flutter, roughness | 0-10, 0-4 | f0 wobble, creak |
| intonation | 1, 2 or 3 (default, flatter, flatter without comma rises) | intonation style |
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "spk"
ACCENT_PREFIX = "en-x-acc"
# The training accents' files (voices.TRAIN_ACCENTS), whose parts generated accents recombine.
TRAIN_ACCENT_FILES = ("en", "en-US", "en-GB-scotland", "en-GB-x-rp", "en-US-nyc", "en-GB-x-gbclan")
DATA_FOLDER = "espeak-ng-data"  # the name espeak-ng expects inside ESPEAK_DATA_PATH
RESERVED_ACCENT_FILES = ("en-029", "en-GB-x-gbcwmd")  # voices.RESERVED_ACCENTS
# espeak-ng's English consonants, by its phoneme mnemonics (`espeak-ng -x` writes them).
CONSONANTS = (
    "p",
    "b",
    "t",
    "d",
    "k",
    "g",
    "f",
    "v",
    "T",
    "D",
    "s",
    "z",
    "S",
    "Z",
    "tS",
    "dZ",
    "m",
    "n",
    "N",
    "l",
    "r",
    "w",
    "j",
    "h",
)
MAX_VOICES = 349  # espeak-ng's N_VOICES_LIST - 1: "maximum number 349 of (N_VOICES_LIST = 350 - 1) reached"


def _uniform(rng: random.Random, low: float, high: float) -> int:
    return int(round(rng.uniform(low, high)))


def draw_speaker(rng: random.Random) -> list[str]:
    """The lines of one generated variant file (after its header), per the module table."""
    base = round(60 * (230 / 60) ** rng.random())
    lines = [f"pitch {base} {round(base * rng.uniform(1.2, 1.9))}"]
    tract = rng.uniform(0.88, 1.15)
    for k in range(9):
        lines.append(
            f"formant {k} {round(100 * tract * rng.uniform(0.96, 1.04))} "
            f"{_uniform(rng, 75, 125)} {_uniform(rng, 80, 150)}"
        )
    if rng.random() < 0.5:
        lines.append("stressAdd " + " ".join(str(_uniform(rng, -20, 50)) for _ in range(8)))
    if rng.random() < 0.5:
        unstressed, stressed = _uniform(rng, 120, 200), _uniform(rng, 160, 240)
        final = _uniform(rng, 230, 320)
        middle = "0 0" if rng.random() < 0.5 else f"{_uniform(rng, 180, 240)} {_uniform(rng, 180, 240)}"
        lines.append(
            f"stressLength {unstressed} {_uniform(rng, 0.8 * unstressed, unstressed)} {stressed} "
            f"{_uniform(rng, 0.85 * stressed, stressed)} {middle} {final} {_uniform(rng, final, final + 40)}"
        )
    lines.append(f"consonants {_uniform(rng, 50, 150)} {_uniform(rng, 50, 150)}")
    lines.append(f"voicing {_uniform(rng, 50, 160)}")
    if rng.random() < 0.25:
        lines.append("breath " + " ".join(str(_uniform(rng, 0, 6)) for _ in range(8)))
    if rng.random() < 1 / 3:
        lines.append(f"echo {_uniform(rng, 0, 140)} {_uniform(rng, 0, 15)}")
    lines.append(f"flutter {_uniform(rng, 0, 10)}")
    lines.append(f"roughness {_uniform(rng, 0, 4)}")
    lines.append(f"intonation {rng.choice((1, 2, 3))}")
    return lines


def system_data_folder() -> Path:
    """espeak-ng's installed data folder, as `espeak-ng --version` reports it."""
    found = shutil.which("espeak-ng")
    if found is None:
        raise FileNotFoundError("espeak-ng is not installed: `apt-get install espeak-ng` (it is in packages.txt)")
    out = subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    if match is None or not Path(match.group(1)).is_dir():
        raise FileNotFoundError(f"could not find espeak-ng's data folder in {out.strip()!r}")
    return Path(match.group(1))


def write_speakers(out: Path, n: int, seed: int = 0, accents: int = 0) -> list[str]:
    """Copy espeak-ng's data into `out/espeak-ng-data` with `n` generated variants and `accents`
    generated accents (`ACCENT_PREFIX`NN); returns the variants' names.

    The same `seed` writes the same files. `out` is then an ESPEAK_DATA_PATH (`espeak_data`).
    """
    if n < 0 or accents < 0:
        raise ValueError(f"need >= 0 generated speakers and accents, got {n} and {accents}")
    data = Path(out) / DATA_FOLDER
    if data.exists():
        shutil.rmtree(data)
    shutil.copytree(system_data_folder(), data)
    _keep_english_only(data)
    shipped = sum(1 for p in (data / "lang").rglob("*") if p.is_file()) + len(list((data / "voices" / "!v").iterdir()))
    if shipped + n + accents > MAX_VOICES:
        raise ValueError(
            f"espeak-ng lists at most {MAX_VOICES} voices and {shipped} are shipped: "
            f"ask for at most {MAX_VOICES - shipped} generated speakers and accents, not {n + accents}"
        )
    _write_accents(data, accents, seed)
    names = []
    for i in range(n):
        name = f"{PREFIX}{i:04d}"
        lines = draw_speaker(random.Random(f"{seed}|speaker|{i}"))
        (data / "voices" / "!v" / name).write_text("\n".join(["language variant", f"name {name}", *lines]) + "\n")
        names.append(name)
    return names


def read_speakers(out: Path) -> list[str]:
    """The generated variants that `write_speakers` left under `out`."""
    return sorted(p.name for p in (Path(out) / DATA_FOLDER / "voices" / "!v").glob(f"{PREFIX}[0-9]*"))


def _write_accents(data: Path, n: int, seed: int) -> None:
    """`n` accent files recombined from the training accents' parts: the phoneme table and
    dictionary rules of one, the stress lengths of another, each phoneme replacement that any of
    them makes with probability 1/3, and `random_substitutions` consonant swaps. No part comes from
    a reserved accent."""
    parts = [_accent_parts(data / "lang" / "gmw" / name) for name in TRAIN_ACCENT_FILES]
    rules = sorted({rule for part in parts for rule in part["replace"]})
    reserved = {
        rule for name in RESERVED_ACCENT_FILES for rule in _accent_parts(data / "lang" / "gmw" / name)["replace"]
    }
    for i in range(n):
        rng = random.Random(f"{seed}|accent|{i}")
        base, rhythm = rng.choice(parts), rng.choice(parts)
        name = f"{ACCENT_PREFIX}{i:02d}"
        lines = [
            f"name {name}",
            f"language {name}",
            *base["table"],
            *rhythm["stress"],
            *(rule for rule in rules if rng.random() < 1 / 3),
            *random_substitutions(rng, reserved),
        ]
        (data / "lang" / "gmw" / name).write_text("\n".join(lines) + "\n")


def random_substitutions(rng: random.Random, excluded: set[str]) -> list[str]:
    """0-3 `replace 00 X Y` rules, X and Y consonants drawn uniformly, none of them in `excluded`.

    Accents differ most in which sounds they substitute, and the training accents' rules are only a
    handful of vowel changes, so a model trained on them alone can take a consonant change for an
    emotion. The swaps are drawn blind (not chosen from any accent), and rules a reserved accent
    makes are excluded, so none of a held-out accent's own rules is heard in training (a draw can
    still resemble one, e.g. `T` as `t` beside en-029's dental `t[`; the README says which did).
    """
    out: list[str] = []
    count = rng.randrange(4)
    while len(out) < count:
        rule = "replace 00 " + " ".join(rng.sample(CONSONANTS, 2))
        if rule not in excluded and rule not in out:
            out.append(rule)
    return out


def _accent_parts(path: Path) -> dict[str, list[str]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {
        "table": [line for line in lines if line.split()[:1] in (["phonemes"], ["dictrules"])],
        "stress": [line for line in lines if line.startswith("stressLength")],
        "replace": [" ".join(line.split()) for line in lines if line.startswith("replace ")],
    }


def generated_accents(out: Path) -> list[str]:
    """The accents that `write_speakers` generated under `out`, as espeak-ng lists them."""
    return sorted(p.name.lower() for p in (Path(out) / DATA_FOLDER / "lang" / "gmw").glob(f"{ACCENT_PREFIX}[0-9]*"))


def _keep_english_only(data: Path) -> None:
    """Drop the other languages and the MBROLA voices from the copy: past espeak-ng's voice-list
    limit (`MAX_VOICES`) it stops finding voices at all, and these free the room for speakers."""
    shutil.rmtree(data / "voices" / "mb", ignore_errors=True)
    for family in (data / "lang").iterdir():
        if family.name != "gmw":
            shutil.rmtree(family) if family.is_dir() else family.unlink()
    for language in (data / "lang" / "gmw").iterdir():
        if not language.name.startswith("en"):
            language.unlink()


def speaker_voices(names: list[str], accents: tuple[str, ...], seed: int = 0, per_speaker: int = 1) -> list[str]:
    """Voice specs `accent+spkNNNN`: each generated variant on `per_speaker` distinct accents drawn
    for it. More than one accent per speaker lets the corpus hear the same timbre with different
    phonetics, so neither can stand in for the other (espeak-ng's voice-list limit caps the
    variants, not the pairs)."""
    if not 1 <= per_speaker <= len(accents):
        raise ValueError(f"per_speaker must be in 1..{len(accents)} (the accents given), got {per_speaker}")
    return [
        f"{accent}+{name}"
        for name in names
        for accent in random.Random(f"{seed}|accent|{name}").sample(list(accents), per_speaker)
    ]


@contextmanager
def espeak_data(path: Path | None) -> Iterator[None]:
    """Run espeak-ng (and this package's listings of its voices) on the data folder under `path`."""
    if path is None:
        yield
        return
    before = os.environ.get("ESPEAK_DATA_PATH")
    os.environ["ESPEAK_DATA_PATH"] = str(Path(path).resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ESPEAK_DATA_PATH", None)
        else:
            os.environ["ESPEAK_DATA_PATH"] = before
