"""The reply's voice style: which prosody answers a user heard in each emotion, under a policy.

A `VoiceStyle` is written in espeak-ng's units (words per minute, pitch 0-99, amplitude, SSML
range names) because espeak was the first backend; `piper_shift` converts it for the neural voice
(Piper's `length_scale` for the rate, a Praat f0 level and range change, a gain), with factors
measured on espeak-ng itself, so the same style sounds the same distance from neutral in both.

Two policies choose the style (`style_for(emotion, policy)`), and the visitor may switch:

- `soothe` (the default) suits the listener's state rather than copying it: a gentle voice for
  a sad speaker, a calm one for an angry speaker, a bright one to share joy or wonder.
- `mirror` speaks in the speaker's own emotion: sad to a sad voice, tense and loud to an angry one.
"""

from __future__ import annotations

from dataclasses import dataclass

from blsp_emo.prosody_shift import ProsodyShift


@dataclass(frozen=True)
class VoiceStyle:
    """Prosody for one reply, in espeak-ng's units (pyttsx3 and Piper map them onto their own)."""

    name: str
    rate: int  # words per minute; espeak-ng's default is 175
    pitch: int  # base pitch 0-99; 50 is the voice's own
    volume: int  # amplitude 0-200; 100 is normal, above ~130 clips
    pitch_range: str  # SSML prosody range: x-low, low, medium, high, x-high (intonation width)
    purpose: str  # what the style is for, shown next to the audio

    def describe(self) -> str:
        return (
            f"{self.name}: {self.purpose} ({self.rate} wpm, pitch {self.pitch}, volume {self.volume}%, "
            f"{self.pitch_range} range)"
        )


# The one table mapping the detected emotion to the reply's voice under each policy. The settings
# are espeak-ng presets whose duration, loudness and F0 were measured on one sentence; their
# directions follow the prosody literature (sad speech is slower, lower and softer; angry speech
# faster, louder and higher; happy and surprised speech faster and higher, with a wider range).
NEUTRAL = VoiceStyle("neutral", 165, 50, 100, "medium", "plain and even")
SOOTHE: dict[str | None, VoiceStyle] = {
    None: NEUTRAL,  # a system that does not perceive emotion
    "neutral": NEUTRAL,
    "sad": VoiceStyle("gentle", 135, 40, 80, "low", "slower, lower and softer, to comfort"),
    "angry": VoiceStyle("calm", 145, 42, 90, "low", "unhurried and steady, to de-escalate"),
    "happy": VoiceStyle("bright", 185, 65, 120, "x-high", "quicker and higher, to share the joy"),
    "surprise": VoiceStyle("lively", 180, 75, 120, "x-high", "animated and high, to match the wonder"),
}
MIRROR: dict[str | None, VoiceStyle] = {
    **SOOTHE,  # neutral, happy and surprise are already spoken in the speaker's own tone
    "sad": VoiceStyle("downcast", 125, 36, 70, "x-low", "slow, low, quiet and flat, as you sounded"),
    "angry": VoiceStyle("tense", 195, 58, 130, "high", "fast, loud and raised, as you sounded"),
}
POLICIES: dict[str, dict[str | None, VoiceStyle]] = {"soothe": SOOTHE, "mirror": MIRROR}
POLICY_HELP = {
    "soothe": "calm and warm for anger and sadness, bright for joy",
    "mirror": "the emotion you were heard in",
}
DEFAULT_POLICY = "soothe"
STYLES = SOOTHE  # the default policy's table, by its older name


def style_for(emotion: str | None, policy: str = DEFAULT_POLICY) -> VoiceStyle:
    """The voice style for a reply to a user heard in `emotion` (neutral for unknown labels)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown voice policy {policy!r}; choose from {list(POLICIES)}")
    return POLICIES[policy].get(emotion, NEUTRAL)


# --- the same style for the neural voice ---------------------------------------------------------

# Measured on espeak-ng (en-us, one sentence, Praat's pitch tracker): each step of `-p` moves the
# median f0 by ~0.17 semitone, and SSML range names scale the 5-95 % f0 spread by these factors.
SEMITONES_PER_PITCH_STEP = 0.17
RANGE_FACTORS = {"x-low": 0.25, "low": 0.5, "medium": 1.0, "high": 1.4, "x-high": 1.75}


def length_scale(style: VoiceStyle) -> float:
    """Piper's `length_scale` (phoneme durations x this): NEUTRAL's rate is the voice's own pace."""
    if style.rate <= 0:
        raise ValueError(f"style {style.name!r} has rate {style.rate}; words per minute must be positive")
    return NEUTRAL.rate / style.rate


def piper_shift(style: VoiceStyle) -> ProsodyShift:
    """The f0 level and range change and the gain that give a neural voice `style` (rate: `length_scale`)."""
    if style.pitch_range not in RANGE_FACTORS:
        raise ValueError(
            f"style {style.name!r} has pitch range {style.pitch_range!r}; use one of {list(RANGE_FACTORS)}"
        )
    return ProsodyShift(
        semitones=SEMITONES_PER_PITCH_STEP * (style.pitch - NEUTRAL.pitch),
        range_factor=RANGE_FACTORS[style.pitch_range],
        gain=style.volume / 100,
    )
