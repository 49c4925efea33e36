"""Every prompt string and the ChatML layout of BLSP-Emo (docs/paper.md §2), in one place.

A prompt is a sequence of pieces: plain text (tokenised on its own, special-token strings inside it
stay text), `Special` tokens, and `Speech` slots that the model fills with speech embeddings. Each
text piece is tokenised separately, as the released data pipeline does.

Trailing newline after `assistant`: the released `generate.py` stops at `<|im_start|>assistant`
and lets the model produce the "\\n" itself, while training always has `assistant\\n` before the
response. We feed `assistant\\n` (the training layout), so prompts at inference are the prompts the
model was trained on; docs/paper.md §2.3 names this the natural equivalent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)

SYSTEM_PLAIN = "You are a helpful assistant."
SYSTEM_EMPATHETIC = (
    "You are a helpful assistant. Your response should fulfill requests with empathy toward user's emotion tone."
)
SER_INSTRUCTION = (
    "Please identify the emotion tone of the speech provided below. Select from the following "
    "options: neutral, sad, angry, happy, or surprise.\n\nSpeech: "
)
# Stage 1: the same instruction precedes the transcript (teacher) and the speech (student).
STAGE1_INSTRUCTION = "Continue the following sentence in a coherent style: "
# Stage 2 teacher: the text LLM is told the emotion (raw label, as released: "a 'angry'").
STAGE2_TEACHER_INSTRUCTION = (
    "Continue the following sentence that reflects a '{emotion}' emotion tone in a coherent style: "
)
# Stage 2 student: the emotion must be heard in the speech.
STAGE2_AUDIO_INSTRUCTION = "Continue the following sentence based on the conveyed emotion tone in a coherent style: "
# cascade-ser: the separate classifier's label reaches the LLM as words in the system prompt. In the
# user turn ("(The speaker's emotion tone is sad.) ...") SmolLM2-135M talked about "the speaker"
# instead of answering them, and asked for no length it drifted into condolences and "as an AI"
# (docs/world.md, "Stage 2 in the chat layout").
TOLD_EMOTION = " Reply in one or two sentences to what the user says. They sound {emotion}."


def told_emotion(system_prompt: str, emotion: str) -> str:
    """The system prompt of an LLM told the user's emotion (cascade-ser, the stage-2 chat teacher)."""
    return system_prompt + TOLD_EMOTION.format(emotion=emotion)


@dataclass(frozen=True)
class Special:
    token: str


@dataclass(frozen=True)
class Speech:
    """A slot for the speech embeddings of clip number `clip` of the prompt."""

    clip: int


Piece = str | Special | Speech


@dataclass(frozen=True, eq=False)
class Turn:
    """One turn of a conversation. A user turn carries text, audio (16 kHz mono), or both.

    For end-to-end systems the audio is what the model hears; cascades use `text` (the transcript)
    and `emotion` (what their classifier heard), so a history replays exactly as it was answered.
    """

    role: str
    text: str = ""
    audio: np.ndarray | None = None
    emotion: str | None = None

    def __post_init__(self):
        if self.role not in ("user", "assistant"):
            raise ValueError(f"Turn.role must be 'user' or 'assistant', got {self.role!r}")


def header(role: str) -> list[Piece]:
    return [Special(IM_START), role, "\n"]


def system_block(system_prompt: str) -> list[Piece]:
    return [*header("system"), system_prompt, Special(IM_END), "\n"]


def assistant_prompt() -> list[Piece]:
    return [*header("assistant")]


def chat_pieces(system_prompt: str, turns: Sequence[Turn], speech_turns: bool = True) -> list[Piece]:
    """ChatML for a conversation that ends with a user turn, up to `<|im_start|>assistant\\n`.

    With `speech_turns`, a user turn with audio is a speech slot (the released chat demo puts only
    the speech in the user turn); otherwise its text is used (cascades).
    """
    pieces = system_block(system_prompt)
    clip = 0
    for turn in turns:
        pieces += header(turn.role)
        if speech_turns and turn.role == "user" and turn.audio is not None:
            pieces.append(Speech(clip))
            clip += 1
        elif turn.text:
            pieces.append(turn.text)
        pieces += [Special(IM_END), "\n"]
    return pieces + assistant_prompt()


def instruction_pieces(system_prompt: str, instruction: str, content: Piece) -> list[Piece]:
    """Single-turn layout of training and evaluation: `user\\n{instruction}{content}`."""
    pieces = [*system_block(system_prompt), *header("user")]
    if instruction:
        pieces.append(instruction)
    return pieces + [content, Special(IM_END), "\n", *assistant_prompt()]


def response_pieces(response: str, early_stop: bool) -> list[Piece]:
    """The labelled part of a training sequence; an `early_stop` teacher output has no end tokens."""
    pieces: list[Piece] = [response] if response else []
    if not early_stop:
        pieces += [Special(IM_END), "\n", Special(END_OF_TEXT)]
    return pieces


def render(pieces: Sequence[Piece]) -> str:
    """The prompt as text, with speech slots shown as `<speech:N>` (for logs and tests)."""
    out = []
    for p in pieces:
        if isinstance(p, Special):
            out.append(p.token)
        elif isinstance(p, Speech):
            out.append(f"<speech:{p.clip}>")
        else:
            out.append(p)
    return "".join(out)
