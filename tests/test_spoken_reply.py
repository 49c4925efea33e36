"""A reply spoken while it is written: which sentences are complete, each spoken once and in order, the
time to first audio, and the whole reply's audio kept for after."""

import numpy as np
import pytest

from blsp_emo.spoken_reply import SentenceSpeaker, complete_sentences, time_to_first_audio
from blsp_emo.tts import NEUTRAL, SpeechSynthesizer
from blsp_emo.voice_style import style_for


class Recorder(SpeechSynthesizer):
    """0.1 s of audio per word, the texts and styles it was asked for, and a clock that moves 1 s per call."""

    name = "recorder"

    def __init__(self, clock=None):
        self.said, self.styles, self.clock = [], [], clock

    def synthesize(self, text, style=NEUTRAL):
        self.said.append(text)
        self.styles.append(style)
        if self.clock is not None:
            self.clock.now += 1.0
        return 16000, np.full(1600 * len(text.split()), len(self.said), np.float32)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_sentence_is_complete_once_the_next_has_begun_or_the_reply_is_done():
    assert complete_sentences("I hear you. Tell", False) == ["I hear you."]
    assert complete_sentences("I hear you. ", False) == []  # the next sentence has not begun: it may be "you. e.g."
    assert complete_sentences("I hear you.", True) == ["I hear you."]
    assert complete_sentences("Dr. Lee is here. Yes", False) == ["Dr. Lee is here."]
    assert complete_sentences("", True) == []


def test_each_sentence_is_spoken_once_in_order_as_the_reply_grows():
    clock = Clock()
    voice = Recorder(clock)
    speaker = SentenceSpeaker(voice, style_for("sad"), started=clock() - 0.5, clock=clock)
    growing = ["I", "I hear", "I hear you.", "I hear you. That", "I hear you. That sounds hard. Tell me"]
    heard = [speaker.feed(text, False) for text in growing]
    assert [[s.text for s in h] for h in heard] == [[], [], [], ["I hear you."], ["That sounds hard."]]
    assert speaker.first_audio_s == pytest.approx(1.5)  # 0.5 s before it started, 1 s to speak it
    last = speaker.feed("I hear you. That sounds hard. Tell me more.", True)
    assert [s.text for s in last] == ["Tell me more."] and speaker.feed(
        "I hear you. That sounds hard. Tell me more.", True
    ) == []
    assert voice.said == ["I hear you.", "That sounds hard.", "Tell me more."]
    assert {s.name for s in voice.styles} == {style_for("sad").name}
    rate, whole = speaker.whole()
    assert rate == 16000 and whole.size == 1600 * 9 and [s.ready_s for s in speaker.spoken] == [1.5, 2.5, 3.5]
    assert np.array_equal(np.unique(whole), [1, 2, 3])  # the sentences back to back, in order


def test_nothing_said_has_no_first_audio():
    speaker = SentenceSpeaker(Recorder())
    assert speaker.feed("   ", True) == [] and speaker.first_audio_s is None and speaker.whole() is None


def test_bench_time_to_first_audio_adds_the_synthesis():
    voice = Recorder()
    assert time_to_first_audio(0.25, "Hello there.", voice) == pytest.approx(0.25, abs=0.05)
    assert voice.said == ["Hello there."]
