"""The neural voice's emotions: Piper speech with the prosody table imposed, measured against neutral."""

import random

import numpy as np
import pytest

from blsp_emo.emotion import EMOTIONS
from blsp_emo.tts import piper_problem
from train.demo_world import neural_voice
from train.demo_world.prosody import PROSODY, TARGET_RMS, Setting

pytestmark = pytest.mark.skipif(bool(piper_problem()), reason=f"Piper cannot run here: {piper_problem()}")
SENTENCES = neural_voice.MEASURE_SENTENCES[:2]


@pytest.fixture(scope="module")
def shifts():
    return {s.emotion: s for s in neural_voice.measure(SENTENCES)}


def test_every_emotion_moves_f0_by_about_what_the_table_asks(shifts):
    assert shifts["neutral"].f0_st == 0 and shifts["neutral"].duration_x == 1 and shifts["neutral"].rms_x == 1
    for emotion in EMOTIONS:
        shift, pitch = shifts[emotion], PROSODY[emotion].pitch.mean
        assert np.sign(shift.f0_st) == np.sign(pitch), shift
        assert abs(shift.f0_st - shift.asked_f0_st) < 1.0, shift  # the tracker sees what PSOLA imposed
    assert shifts["surprise"].f0_st > shifts["happy"].f0_st > shifts["angry"].f0_st > 0 > shifts["sad"].f0_st


def test_the_f0_range_widens_or_narrows_as_the_table_says(shifts):
    for emotion in ("happy", "angry", "surprise"):
        assert shifts[emotion].range_st > 0, shifts[emotion]
    assert shifts["sad"].range_st < -3  # -55 %: the excursions less than halved
    assert shifts["surprise"].range_st > shifts["happy"].range_st > shifts["angry"].range_st


def test_duration_follows_the_rate_and_energy_the_volume(shifts):
    for emotion in EMOTIONS:
        shift, knobs = shifts[emotion], PROSODY[emotion]
        assert shift.duration_x == pytest.approx(1 / (1 + knobs.rate.mean / 100), rel=0.01)
        assert shift.rms_x == pytest.approx(1 + knobs.volume.mean / 100, rel=0.06)  # PSOLA keeps the level


def test_render_is_seeded_and_unnormalised():
    text = SENTENCES[0]
    rate, first = neural_voice.render(text, "angry", random.Random(3))
    _, again = neural_voice.render(text, "angry", random.Random(3))
    _, other = neural_voice.render(text, "angry", random.Random(4))
    assert rate == 22050 and first.dtype == np.float32 and first.ndim == 1
    np.testing.assert_array_equal(first, again)  # zero noise: the same seed gives the same clip
    assert first.size != other.size or not np.array_equal(first, other)  # the jitter moved something
    assert neutral_rms(text) == pytest.approx(TARGET_RMS, rel=0.15)  # calibrated, as espeak voices are
    loud = Setting(0, 0, 0, 400, neural_voice.calibration_amplitude())  # 5x: past full scale, not clipped
    assert np.abs(neural_voice.render_setting(text, loud)[1]).max() > 1.0


def neutral_rms(text: str) -> float:
    from blsp_emo.prosody_shift import acoustics

    setting = neural_voice.sample("neutral", random.Random(0), jitter=0.0)
    return acoustics(*neural_voice.render_setting(text, setting)).rms


def test_neutral_speech_is_made_once_per_text():
    neural_voice.neutral_speech.cache_clear()
    a, b = neural_voice.neutral_speech(SENTENCES[1]), neural_voice.neutral_speech(SENTENCES[1])
    assert a is b and not a[1].flags.writeable  # shared, so nobody may change it in place
    with pytest.raises(ValueError, match="empty text"):
        neural_voice.neutral_speech("  ")
    with pytest.raises(ValueError, match="unknown emotion 'bored'"):
        neural_voice.render("Hello.", "bored", random.Random(0))


def test_the_cli_prints_the_table_and_writes_a_clip(tmp_path, capsys):
    from train.__main__ import main

    assert main(["neural-voice", "--measure", "--sentences", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 + 1 + len(EMOTIONS) and "| sad | -30 ± 10 |" in printed
    out = tmp_path / "sad.wav"
    assert main(["neural-voice", "--text", "I lost my keys.", "--emotion", "sad", "--out", str(out)]) == 0
    import soundfile as sf

    samples, rate = sf.read(out)
    assert rate == 22050 and samples.size > rate // 2
    assert main(["neural-voice", "--measure", "--sentences", "9"]) == 2  # a clear error, no traceback
