"""The text the demo-scale chat LM learns: what the paper's Qwen-7B-Chat already knows, in miniature.

Every example is a ChatML conversation built with `blsp_emo.prompts`, in the formats the pipeline
uses later, so the LM can serve as its own teacher (as Qwen does in the paper):

| format | system prompt | user turn | assistant |
|---|---|---|---|
| `continue` | plain | STAGE1_INSTRUCTION, sentence | a continuation in the words' own tone |
| `continue_emotion` | empathetic | STAGE2_TEACHER_INSTRUCTION(e), sentence | a continuation in tone e |
| `ser` | plain | SER_INSTRUCTION, sentence | "The emotion tone of the speech provided is e." (words only) |
| `chat` | empathetic | sentence | a reply fitting the words' own tone |
| `chat_emotion` | empathetic, told e (`told_emotion`) | sentence | a reply fitting tone e |

"The words' own tone" is the sentence's lexical cue, or neutral for the plain sentences that make
up most of the corpus: from text alone, the LM cannot know the speaker's tone.
Replies and continuations are composed from per-emotion phrase banks (one table below), so a
text classifier can judge a reply's tone (`train/demo_world/judge.py`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from blsp_emo.emotion import EMOTIONS
from blsp_emo.prompts import (
    SER_INSTRUCTION,
    STAGE1_INSTRUCTION,
    STAGE2_TEACHER_INSTRUCTION,
    SYSTEM_EMPATHETIC,
    SYSTEM_PLAIN,
    TOLD_EMOTION,
    told_emotion,
)

# (openers, bodies): a reply is one opener and one body; a continuation is one body and one ending.
REPLIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "neutral": (
        ("Okay, thanks for letting me know.", "I see, that makes sense.", "Alright, noted.", "Got it."),
        (
            "Is there anything you would like to do next?",
            "Let me know if you need help with it.",
            "What would you like to do about it?",
            "Tell me if anything changes.",
        ),
    ),
    "happy": (
        (
            "That's wonderful news!",
            "How lovely, I'm so glad for you!",
            "That's great to hear!",
            "Yay, that's fantastic!",
        ),
        (
            "You must be so pleased, enjoy every moment of it.",
            "I love hearing you this cheerful.",
            "Let's celebrate, you deserve it.",
            "Your joy is contagious, thank you for sharing it.",
        ),
    ),
    "angry": (
        (
            "I can hear how frustrated you are.",
            "That sounds really infuriating.",
            "I understand why you're upset.",
            "It's completely fair to be angry about that.",
        ),
        (
            "Let's take a breath and figure out what we can do.",
            "Your feelings are valid, and we can sort this out calmly.",
            "Would it help to talk through what happened?",
            "I'm on your side, let's find a fair way forward.",
        ),
    ),
    "sad": (
        (
            "I'm so sorry you're feeling this way.",
            "That sounds really hard.",
            "I'm sorry, that must hurt.",
            "Oh, I'm sorry to hear that.",
        ),
        (
            "I'm here for you, take all the time you need.",
            "It's okay to feel down, you're not alone in this.",
            "Be gentle with yourself today.",
            "If you want to talk about it, I'm listening.",
        ),
    ),
    "surprise": (
        ("Wow, I did not see that coming!", "Oh my, really?", "No way, that's unexpected!", "Whoa, what a surprise!"),
        (
            "Tell me everything, how did it happen?",
            "That must have caught you completely off guard.",
            "What a twist, how do you feel about it?",
            "I'm amazed, I want to hear more.",
        ),
    ),
}
CONTINUATIONS: dict[str, tuple[str, ...]] = {
    "neutral": (
        "After that, I went on with the rest of my day.",
        "Then I put it aside and checked my schedule.",
        "It was an ordinary part of the week.",
        "Later, I made a note of it and moved on.",
    ),
    "happy": (
        "It made my whole day brighter, and I can't stop smiling!",
        "I felt so lucky and cheerful afterwards!",
        "Honestly, it was the best part of my week!",
        "I was beaming with joy all evening!",
    ),
    "angry": (
        "And honestly, I'm fed up with how they handled it!",
        "It made me furious, this is not acceptable!",
        "I'm so annoyed that nobody listened to me!",
        "That was completely unfair, and I won't stand for it!",
    ),
    "sad": (
        "I just felt heavy and quiet for the rest of the day.",
        "It left me feeling lonely and tired.",
        "I couldn't stop feeling down about it.",
        "Somehow it made everything seem a little grey.",
    ),
    "surprise": (
        "I never expected that, it caught me completely off guard!",
        "I couldn't believe my ears!",
        "What a shock, I had no idea it was coming!",
        "I was stunned, it happened so suddenly!",
    ),
}
FORMATS = ("continue", "continue_emotion", "ser", "chat", "chat_emotion")


@dataclass(frozen=True)
class Example:
    """One conversation: `instruction` and `text` are separate prompt pieces (tokenised apart,
    as the teacher and the stage collator do); chat formats have no instruction."""

    format: str
    system: str
    instruction: str
    text: str
    response: str
    emotion: str  # the tone the response carries


def reply(emotion: str, rng: random.Random) -> str:
    openers, bodies = REPLIES[emotion]
    return f"{rng.choice(openers)} {rng.choice(bodies)}"


def continuation(emotion: str, rng: random.Random) -> str:
    return rng.choice(CONTINUATIONS[emotion])


def ser_answer(emotion: str) -> str:
    return f"The emotion tone of the speech provided is {emotion}."


def examples_for(text: str, cue: str | None, rng: random.Random, emotions_per_sentence: int = 2) -> Iterator[Example]:
    """All five formats for one sentence; the emotion-given formats for a few sampled emotions."""
    own = cue or "neutral"
    yield Example("continue", SYSTEM_PLAIN, STAGE1_INSTRUCTION, text, continuation(own, rng), own)
    yield Example("ser", SYSTEM_PLAIN, SER_INSTRUCTION, text, ser_answer(own), own)
    yield Example("chat", SYSTEM_EMPATHETIC, "", text, reply(own, rng), own)
    for e in rng.sample(EMOTIONS, emotions_per_sentence):
        yield Example(
            "continue_emotion",
            SYSTEM_EMPATHETIC,
            STAGE2_TEACHER_INSTRUCTION.format(emotion=e),
            text,
            continuation(e, rng),
            e,
        )
        # The system prompt exactly as cascade-ser sends it.
        yield Example("chat_emotion", told_emotion(SYSTEM_EMPATHETIC, e), "", text, reply(e, rng), e)


def build_corpus(
    sentences: Sequence[tuple[str, str | None]], seed: int = 0, emotions_per_sentence: int = 2
) -> list[Example]:
    """Examples for (text, cue) sentences, shuffled deterministically."""
    rng = random.Random(seed)
    out = [ex for text, cue in sentences for ex in examples_for(text, cue, rng, emotions_per_sentence)]
    rng.shuffle(out)
    return out


def tokenizer_texts(examples: Sequence[Example]) -> Iterator[str]:
    """Everything the BPE tokenizer should see: prompts, sentences, responses, the banks."""
    yield from (SYSTEM_PLAIN, SYSTEM_EMPATHETIC, SER_INSTRUCTION, STAGE1_INSTRUCTION, TOLD_EMOTION)
    yield from ("system\n", "user\n", "assistant\n")
    for ex in examples:
        yield ex.instruction + ex.text
        yield ex.response
