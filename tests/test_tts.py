"""TTS backends: the emotion -> voice table, espeak-ng and pyttsx3 output, and concurrency safety."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from blsp_emo import tts
from blsp_emo.emotion import EMOTIONS
from blsp_emo.tts import NEUTRAL, duration, style_for

SENTENCES = [  # distinct lengths, so a request answered with another's audio shows in its duration
    "I see, tell me more.",
    "I am sorry to hear that, really.",
    "That sounds like a really hard day, and I am here for you.",
    "Thank you for telling me. It is completely understandable to feel this way after everything that happened.",
]


def test_every_emotion_has_a_style_and_the_table_says_how_it_differs():
    assert style_for(None) is NEUTRAL and style_for("bored") is NEUTRAL
    assert {e for e in EMOTIONS} <= set(tts.STYLES)
    assert style_for("sad").rate < NEUTRAL.rate and style_for("sad").volume < NEUTRAL.volume
    assert style_for("angry").rate < NEUTRAL.rate and style_for("angry").pitch_range == "low"
    assert style_for("happy").pitch > NEUTRAL.pitch and style_for("surprise").pitch > NEUTRAL.pitch
    assert len({s.name for s in tts.STYLES.values()}) == 5
    assert "comfort" in style_for("sad").describe()


def test_clean_text_drops_control_characters_and_caps_length():
    assert tts.clean_text("a\x07b\r\n  c\ufffd") == "a b c"
    long = tts.clean_text("word " * 1000)
    assert len(long) <= tts.MAX_CHARS and long.endswith("word")


def test_null_backend_says_nothing():
    assert tts.load_synthesizer("none").synthesize("Hello there.", style_for("sad")) is None
    assert duration(None) == 0.0


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match=r"available: \['espeak', 'pyttsx3', 'none'\]"):
        tts.load_synthesizer("festival")


def test_missing_espeak_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(tts.shutil, "which", lambda name: None)
    with pytest.raises(tts.SynthesizerUnavailableError, match="apt-get install espeak-ng"):
        tts.load_synthesizer("espeak")


@pytest.fixture(scope="module")
def espeak():
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return tts.load_synthesizer("espeak")


def test_espeak_duration_grows_with_text(espeak):
    rate, samples = espeak.synthesize(SENTENCES[0])
    assert rate == 22050 and samples.dtype == np.float32 and samples.ndim == 1
    assert 0 < np.abs(samples).max() <= 1.0
    durations = [duration(espeak.synthesize(s)) for s in SENTENCES]
    assert durations == sorted(durations) and durations[-1] > 3 * durations[0]


def test_espeak_style_changes_duration(espeak):
    text = SENTENCES[2]
    neutral, sad, happy = (duration(espeak.synthesize(text, style_for(e))) for e in ("neutral", "sad", "happy"))
    assert sad > 1.1 * neutral  # gentle: slower
    assert happy < 0.95 * neutral  # bright: quicker


def test_espeak_speaks_markup_characters_and_skips_empty_text(espeak):
    assert duration(espeak.synthesize("a < b & c > d")) > 0.5
    assert espeak.synthesize(" \x07 ") is None


def _concurrent_durations(synth, jobs, threads=8):
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda job: duration(synth.synthesize(*job)), jobs))


def _jobs():
    emotions = ("neutral", "sad", "happy", "angry")
    return [(SENTENCES[i % 4], style_for(emotions[(i // 4 + i) % 4])) for i in range(8)]


def test_espeak_concurrent_requests_each_get_their_own_audio(espeak):
    jobs = _jobs()
    expected = [duration(espeak.synthesize(*job)) for job in jobs]
    assert _concurrent_durations(espeak, jobs) == pytest.approx(expected, rel=0.01)


@pytest.fixture(scope="module")
def pyttsx3_synth():
    try:
        return tts.load_synthesizer("pyttsx3")
    except tts.SynthesizerUnavailableError as e:
        pytest.skip(f"pyttsx3 cannot start here: {e}")


def test_pyttsx3_serialised_requests_keep_their_text_and_style(pyttsx3_synth):
    jobs = _jobs()
    expected = [duration(pyttsx3_synth.synthesize(*job)) for job in jobs]
    assert all(d > 0.3 for d in expected)
    # styles reach the engine (pyttsx3 on eSpeak drops rate changes when not serialised and settled)
    assert duration(pyttsx3_synth.synthesize(SENTENCES[2], style_for("sad"))) > 1.1 * duration(
        pyttsx3_synth.synthesize(SENTENCES[2], style_for("happy"))
    )
    # pyttsx3's eSpeak driver drops the last audio buffer of each utterance, whose length depends on
    # the previous one (up to ~50 ms); another request's text or style would be off by 0.4 s or more.
    for threads in (4, 8):
        assert _concurrent_durations(pyttsx3_synth, jobs, threads) == pytest.approx(expected, abs=0.1)
    assert tts.Pyttsx3Synthesizer()._worker is pyttsx3_synth._worker  # one engine, one worker per process
