"""Audio in: formats, channels and rates normalise; every bad input raises its own one-line error."""

import struct

import numpy as np
import pytest
import soundfile as sf

import tiny
from blsp_emo.audio import (
    SAMPLE_RATE,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    InvalidSamplesError,
    NotAudioError,
    SilentAudioError,
    load_audio,
    log_mel,
)


def test_stereo_44k_becomes_mono_16k(tmp_path):
    left = tiny.tone(2.0, 220.0, rate=44100)
    stereo = np.stack([left, 0.5 * left], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100)
    wave_ = load_audio(path)
    assert wave_.dtype == np.float32 and wave_.ndim == 1
    assert abs(wave_.size - 2 * SAMPLE_RATE) <= 2
    assert np.isclose(np.abs(wave_).max(), 0.75 * np.abs(left).max(), atol=0.05)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_other_containers_decode(tmp_path, fmt):
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, tiny.tone(1.0, rate=22050), 22050, format=fmt)
    assert abs(load_audio(path).size - SAMPLE_RATE) < 200


def test_8k_stereo_and_gradio_tuple_and_bytes(tmp_path):
    samples = (tiny.tone(1.0, rate=8000) * 32767).astype(np.int16)
    stereo = np.stack([samples, samples], axis=1)
    from_tuple = load_audio((8000, stereo))
    path = tmp_path / "8k.wav"
    sf.write(path, stereo, 8000, subtype="PCM_16")
    from_file = load_audio(path)
    from_bytes = load_audio(path.read_bytes())
    assert from_tuple.size == from_file.size == from_bytes.size == SAMPLE_RATE
    np.testing.assert_allclose(from_tuple, from_file, atol=1e-3)


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


def _write_wav(path, samples, rate=SAMPLE_RATE):
    sf.write(path, samples, rate)
    return path


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda p: _write_bytes(p, b""), EmptyAudioError, "empty"),
        (lambda p: _write_wav(p, np.zeros(0, np.float32)), EmptyAudioError, "no samples"),
        (lambda p: _write_wav(p, np.zeros(800, np.float32)), EmptyAudioError, "too short"),
        (lambda p: _write_wav(p, np.zeros(3 * SAMPLE_RATE, np.float32)), SilentAudioError, "silent"),
        (lambda p: _write_wav(p, tiny.tone(31.0)), AudioTooLongError, "30 s window"),
        (lambda p: _write_bytes(p, b"\x89PNG\r\n\x1a\n" + bytes(200)), NotAudioError, "not a readable audio"),
        (lambda p: _write_bytes(p, np.random.default_rng(0).bytes(4096)), NotAudioError, "not a readable audio"),
    ],
    ids=["empty-file", "zero-samples", "too-short", "all-zero", "too-long", "png", "random-bytes"],
)
def test_bad_files_raise_named_errors(tmp_path, make, error, words):
    path = make(tmp_path / "bad.wav")
    with pytest.raises(error) as info:
        load_audio(path)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message


def test_nan_and_inf_samples_rejected():
    for bad in (np.nan, np.inf):
        samples = tiny.tone(1.0)
        samples[100] = bad
        with pytest.raises(InvalidSamplesError, match="NaN or infinite"):
            load_audio(samples)


def test_truncated_wav_header(tmp_path):
    path = _write_wav(tmp_path / "ok.wav", tiny.tone(1.0))
    (tmp_path / "cut.wav").write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError):
        load_audio(tmp_path / "cut.wav")


def test_long_file_refused_before_decoding(tmp_path):
    """2 h of audio is refused from its header: its 230 MB of samples are never read."""
    path = tmp_path / "two_hours.wav"
    n_bytes = 2 * 3600 * SAMPLE_RATE * 2
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + n_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        SAMPLE_RATE,
        SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        n_bytes,
    )
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n_bytes)  # sparse: the samples take no disk space
    with pytest.raises(AudioTooLongError, match="7200.0 s"):
        load_audio(path)


def test_not_a_file_and_not_audio_types(tmp_path):
    with pytest.raises(NotAudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(NotAudioError):
        load_audio(12345)


def test_log_mel_counts_valid_frames():
    features, counts = log_mel([tiny.tone(5.0), tiny.tone(1.0)], n_mels=80, n_frames=1000)
    assert features.shape == (2, 80, 1000)
    assert counts.tolist() == [500, 100]
