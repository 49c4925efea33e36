"""espeak-ng voices for `python -m train synth`: which exist, which train, which are held out.

Voices are espeak-ng specs `accent+variant` (`en-us+m3`). Evaluation voices (`RESERVED_*`) never
train: `check_voices` refuses them unless asked for a test set, and then refuses every other voice.
espeak-ng silently falls back to its default voice on an unknown name, so names are checked
against its own listings.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

# Evaluation voices (docs/demo_world.md): never used for training.
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
# fmt: off
TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3", "klatt4",
    "klatt5", "Alex", "Alicia", "Andrea", "Andy", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2", "Henrique",
    "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm", "Tweaky", "adam", "anika",
    "announcer", "antonio", "aunty", "belinda", "benjamin", "boris", "david", "ed", "grandma", "grandpa",
    "gustave", "iven", "john", "kaukovalta", "linda", "marcelo", "max", "michel", "miguel", "norbert", "pablo",
    "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "steph2", "travis", "victor",
    "zac",
)
# fmt: on
TRAIN_VOICES = tuple(f"{accent}+{variant}" for variant in TRAIN_VARIANTS for accent in TRAIN_ACCENTS)
EVAL_VOICES = (
    "en-029+m3",
    "en-gb-x-gbcwmd+f2",
    "en-us+f5",
    "en-gb+m8",
    "en-us-nyc+Annie",
    "en-gb-x-rp+edward",
)


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
    """Whether `voice` belongs to the evaluation speakers, which training never uses."""
    voice = Voice.parse(voice) if isinstance(voice, str) else voice
    return voice.accent in RESERVED_ACCENTS or (voice.variant or "").lower() in RESERVED_VARIANTS


def espeak_data_path() -> str | None:
    """espeak-ng's own ESPEAK_DATA_PATH (generated speakers live there, `train/demo_world/speakers.py`)."""
    return os.environ.get("ESPEAK_DATA_PATH")


def espeak_accents() -> dict[str, str]:
    """English accents espeak-ng can speak -> voice file (mbrola voices excluded: they need MBROLA)."""
    return _accents(espeak_data_path())


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
    return _variants(espeak_data_path())


@cache
def _variants(data_path: str | None) -> frozenset[str]:
    rows = _espeak_listing("--voices=variant")
    return frozenset(row.split("!v/", 1)[1].split(" (")[0].strip() for row in rows if "!v/" in row)


def _espeak_listing(option: str) -> list[str]:
    out = subprocess.run([espeak_binary(), option], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[1:]  # after the header


def espeak_binary() -> str:
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
