"""Hands-free turn-taking: the VAD segmentation on synthetic audio (a loudness stand-in for Silero), and
Silero itself on real speech."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blsp_emo import vad
from blsp_emo.vad import FRAME, Carry, SpeechStarted, Utterance, VadOptions, VadState

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
RATE = 48_000  # what Chromium's microphone streams
CHUNK = int(0.3 * RATE)
DEFAULTS = VadOptions()


class Loudness:
    """A stand-in scorer: a frame is speech when it is loud (synthetic 'speech' is a tone, a pause is quiet)."""

    def __init__(self):
        self.frames = 0

    def score(self, frames: np.ndarray, carry: Carry) -> tuple[np.ndarray, Carry]:
        self.frames += len(frames)
        return (np.abs(frames).max(axis=1) > 0.05).astype(np.float32), carry


def _speech(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def _pause(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def _stream(audio: np.ndarray, options=DEFAULTS, scorer=None, chunk=CHUNK, rate=RATE):
    """Feed `audio` chunk by chunk as a microphone would; every event, and the largest state seen."""
    state, events, largest = VadState(), [], 0
    scorer = scorer or Loudness()
    for i in range(0, audio.size, chunk):
        state, happened = vad.step(state, rate, audio[i : i + chunk], options, scorer)
        events += happened
        largest = max(largest, sum(a.size for a in state.audio))
        assert state.pending.size < FRAME
    return events, state, largest


def _turns(events) -> list[Utterance]:
    return [e for e in events if isinstance(e, Utterance)]


def test_speech_pause_speech_is_two_turns_each_sent_after_the_pause():
    audio = np.concatenate([_pause(0.5), _speech(2.0), _pause(1.5), _speech(1.0), _pause(1.5)])
    events, _, _ = _stream(audio)
    assert [type(e) for e in events] == [SpeechStarted, Utterance, SpeechStarted, Utterance]
    first, second = _turns(events)
    options = VadOptions()
    # each turn: the speech, the pre-roll before it and a little after it, to within a frame
    for turn, speech in ((first, 2.0), (second, 1.0)):
        assert turn.rate == RATE and not turn.cut
        assert turn.seconds == pytest.approx(speech + options.pre_roll_s + options.keep_after_s, abs=0.07)
        assert np.abs(turn.samples).max() > 0.2
        assert options.pause_s <= turn.waited_s < options.pause_s + 0.3 + 0.04  # the pause, then the chunk it ended in
    assert first.speech_end_s == pytest.approx(2.5, abs=0.04) and second.speech_end_s == pytest.approx(5.0, abs=0.04)
    assert events[0].at_s == pytest.approx(0.5, abs=0.04) and events[2].at_s == pytest.approx(4.0, abs=0.04)


def test_a_pause_shorter_than_the_setting_keeps_one_turn():
    audio = np.concatenate([_speech(1.0), _pause(0.5), _speech(1.0), _pause(1.5)])
    turns = _turns(_stream(audio, VadOptions(pause_s=0.8))[0])
    assert len(turns) == 1 and turns[0].seconds == pytest.approx(2.5 + 0.2, abs=0.07)  # no pre-roll at the start
    assert len(_turns(_stream(audio, VadOptions(pause_s=0.4))[0])) == 2  # a shorter setting splits it


def test_a_click_is_no_turn_and_does_not_interrupt():
    audio = np.concatenate([_pause(0.5), _speech(0.1), _pause(2.0)])
    events, state, _ = _stream(audio)
    assert events == [] and state.speech_start_s is None


def test_long_speech_is_sent_at_the_bound_and_nothing_grows_past_it():
    options = VadOptions(max_utterance_s=5.0)
    events, _, largest = _stream(np.concatenate([_speech(23.0), _pause(1.5)]), options)
    turns = _turns(events)
    assert [t.cut for t in turns] == [True] * 4 + [False]
    assert all(t.seconds <= options.max_utterance_s + options.pre_roll_s + 0.05 for t in turns)
    assert sum(t.seconds for t in turns) == pytest.approx(23.0, abs=1.5)  # nothing lost between the parts
    assert largest <= (options.max_utterance_s + options.pre_roll_s + 2 * 0.3) * RATE
    _, idle, idle_largest = _stream(_pause(60.0))  # an hour of silence would hold no more: the pre-roll
    assert idle_largest <= (options.pre_roll_s + 2 * 0.3) * RATE and idle.heard_s == pytest.approx(60.0)


def test_a_huge_chunk_is_cut_to_its_last_seconds():
    scorer = Loudness()
    state, events = vad.step(VadState(), RATE, _speech(60.0), VadOptions(max_chunk_s=2.0), scorer)
    assert state.heard_s == pytest.approx(2.0) and scorer.frames == 2 * 16_000 // FRAME and events


def test_a_new_rate_is_a_new_stream_and_a_bad_rate_is_named():
    state, _ = vad.step(VadState(), RATE, _speech(1.0), VadOptions(), Loudness())
    state, _ = vad.step(state, 44_100, _pause(0.3, 44_100), VadOptions(), Loudness())
    assert state.rate == 44_100 and state.heard_s == pytest.approx(0.3) and state.speech_start_s is None
    with pytest.raises(ValueError, match="microphone sample rate 1000000 Hz; give 8000 to 192000 Hz"):
        vad.step(VadState(), 1_000_000, _pause(0.3), VadOptions(), Loudness())


def test_options_out_of_range_name_the_value_and_the_range():
    with pytest.raises(ValueError, match="VAD pause_s is 0.05; give a number from 0.2 to 5"):
        VadOptions(pause_s=0.05)
    with pytest.raises(ValueError, match="keep_after_s 0.5 must be below pause_s 0.3"):
        VadOptions(pause_s=0.3, keep_after_s=0.5)


def test_microphone_chunks_become_mono_floats():
    stereo = np.array([[32767, -32767], [16384, 16384]], np.int16)
    assert vad.to_mono_float(stereo) == pytest.approx([0.0, 0.5], abs=1e-4)
    assert vad.to_mono_float(np.array([np.nan, 2.0], np.float32)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="is not audio"):
        vad.to_mono_float(np.array(["a"]))


def test_silero_onnx_scores_as_the_wheels_torchscript_model():
    torch = pytest.importorskip("torch")
    from silero_vad import load_silero_vad

    clip, _ = sf.read(EXAMPLES / "annie_sad.wav", dtype="float32")
    scripted = load_silero_vad().audio_forward(torch.from_numpy(clip), 16_000)[0].numpy()
    frames = np.pad(clip, (0, (-clip.size) % FRAME)).reshape(-1, FRAME)
    ours, _ = vad.load_vad().score(frames, Carry())
    assert np.abs(scripted - ours).max() < 1e-4 and ours.max() > 0.9 and vad.load_vad() is vad.load_vad()


def test_silero_finds_two_spoken_turns_in_real_speech():
    import librosa

    a, _ = sf.read(EXAMPLES / "annie_sad.wav", dtype="float32")
    b, _ = sf.read(EXAMPLES / "edward_happy.wav", dtype="float32")
    quiet = np.zeros(24_000, np.float32)
    audio = librosa.resample(np.concatenate([quiet, a, quiet, b, quiet, quiet]), orig_sr=16_000, target_sr=RATE)
    turns = _turns(_stream(audio, scorer=vad.load_vad())[0])
    assert len(turns) == 2
    assert turns[0].seconds == pytest.approx(a.size / 16_000, abs=0.6)
    assert turns[1].seconds == pytest.approx(b.size / 16_000, abs=0.6)
