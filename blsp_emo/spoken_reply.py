"""A reply spoken while it is written: each sentence is synthesized as soon as it is complete, and the
time from the end of the visitor's speech to the first sound of the reply (time to first audio) is kept.

`SentenceSpeaker` is fed the growing reply text; the page plays what it returns at once, and `bench`
uses `first_sentence` and `time_to_first_audio` to report the same measure for every system.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blsp_emo.tts import NEUTRAL, SpeechSynthesizer, VoiceStyle, split_sentences


@dataclass(frozen=True)
class SpokenSentence:
    text: str
    audio: tuple[int, np.ndarray]  # (sample rate, (T,) float32)
    ready_s: float  # seconds from the speaker's start until this audio was ready

    @property
    def seconds(self) -> float:
        return self.audio[1].size / self.audio[0]


def complete_sentences(text: str, done: bool) -> list[str]:
    """The sentences of a growing reply that are finished: every one once the reply is done, else all but
    the last, which may still grow (a sentence is finished when the next one has begun)."""
    sentences = split_sentences(text)
    return sentences if done else sentences[:-1]


class SentenceSpeaker:
    """Speaks one growing reply in order, each sentence once. One per reply, never shared.

    `started` is when the clock starts (the end of the visitor's speech, on `clock`); `ready_s` of each
    sentence counts from it.
    """

    def __init__(
        self,
        synthesizer: SpeechSynthesizer,
        style: VoiceStyle = NEUTRAL,
        started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.synthesizer, self.style, self.clock = synthesizer, style, clock
        self.started = clock() if started is None else started
        self.spoken: list[SpokenSentence] = []
        self._taken = 0  # sentences of the reply handled so far (one may have given no audio)

    def feed(self, text: str, done: bool) -> list[SpokenSentence]:
        """Synthesize the sentences of `text` completed since the last call; their audio, in order."""
        new = complete_sentences(text, done)[self._taken :]
        self._taken += len(new)
        out = []
        for sentence in new:
            audio = self.synthesizer.synthesize(sentence, self.style)
            if audio is not None and audio[1].size:
                out.append(SpokenSentence(sentence, audio, self.clock() - self.started))
        self.spoken += out
        return out

    @property
    def first_audio_s(self) -> float | None:
        """Time to first audio: from `started` until the first sentence's audio was ready (None: none yet)."""
        return self.spoken[0].ready_s if self.spoken else None

    def whole(self) -> tuple[int, np.ndarray] | None:
        """Every sentence's audio back to back (None: nothing was said), to keep and replay after."""
        if not self.spoken:
            return None
        return self.spoken[0].audio[0], np.concatenate([s.audio[1] for s in self.spoken])  # one voice, one rate


def time_to_first_audio(
    sentence_s: float, sentence: str, synthesizer: SpeechSynthesizer, style: VoiceStyle = NEUTRAL
) -> float:
    """`sentence_s` (when the first sentence was complete) plus the time to synthesize `sentence` now:
    the bench's measure, taken after the reply so that it does not slow the reply's own timings."""
    start = time.perf_counter()
    synthesizer.synthesize(sentence, style)
    return sentence_s + time.perf_counter() - start
