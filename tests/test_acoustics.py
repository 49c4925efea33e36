"""The recording chain: each setting does what it says, measured on the output."""

import json
import random

import numpy as np
import pytest
import soundfile as sf

from train.demo_world import acoustics
from train.demo_world.acoustics import EVAL_CONDITIONS, Acoustics, apply, draw, level_dbfs, record_corpus

SR = 16000


def tone(seconds=1.0, sr=SR, f=220.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(2 * np.pi * 3 * f * t)).astype(np.float32)


def test_the_default_chain_changes_nothing():
    x = tone()
    rate, y = apply(x, SR, Acoustics())
    assert rate == SR and np.array_equal(y, x)


@pytest.mark.parametrize("gain_db", [-20.0, -3.0, 10.0])
def test_gain_moves_the_level_by_exactly_its_decibels(gain_db):
    x = tone()
    _, y = apply(x, SR, Acoustics(gain_db=gain_db))
    assert level_dbfs(y) - level_dbfs(x) == pytest.approx(gain_db, abs=1e-3)


@pytest.mark.parametrize("kind", acoustics.NOISES)
def test_noise_sits_at_its_snr(kind):
    x = tone(2.0)
    _, y = apply(x, SR, Acoustics(snr_db=20.0, noise=kind), seed=3)
    noise = y - x
    assert level_dbfs(x) - level_dbfs(noise) == pytest.approx(20.0, abs=0.01)


def test_pink_and_brown_noise_lean_to_the_low_frequencies():
    rng = np.random.default_rng(0)
    x = np.ones(SR * 2)

    def low_share(kind):
        n = acoustics.noise_like(x, 0.0, kind, rng)
        power = np.abs(np.fft.rfft(n)) ** 2
        f = np.fft.rfftfreq(len(n), 1 / SR)
        return power[f < 500].sum() / power.sum()

    white, pink, brown = low_share("white"), low_share("pink"), low_share("brown")
    assert white < 0.1 < pink < brown  # white: 500/8000 of the band; pink and brown far more


@pytest.mark.parametrize("rt60", [0.2, 0.6])
def test_the_room_decays_by_60_db_in_its_rt60(rt60):
    h = acoustics.room_response(SR, rt60, np.random.default_rng(1))
    tail = h[1:] ** 2
    energy_left = np.cumsum(tail[::-1])[::-1]  # Schroeder's backward integration
    decay_db = 10 * np.log10(energy_left / energy_left[0])
    # Fit the slope between -5 and -25 dB, as RT60 is measured (T20), and extrapolate to -60 dB.
    idx = np.where((decay_db <= -5) & (decay_db >= -25))[0]
    slope = np.polyfit(idx / SR, decay_db[idx], 1)[0]
    assert -60 / slope == pytest.approx(rt60, rel=0.2)


def test_reverberation_keeps_the_length_and_smears_the_sound():
    x = np.zeros(SR, dtype=np.float32)
    x[1000] = 1.0
    _, y = apply(x, SR, Acoustics(rt60=0.5), seed=2)
    assert len(y) == len(x) and y[1000] == pytest.approx(1.0)
    assert np.abs(y[1000 + SR // 10 :]).max() > 0  # energy 100 ms after the click


def test_a_low_rate_file_loses_the_top_band():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SR).astype(np.float32) * 0.1
    rate, y = apply(x, SR, Acoustics(sample_rate=8000))
    assert rate == 8000 and abs(len(y) - SR // 2) <= 1
    import librosa

    back = librosa.resample(y, orig_sr=8000, target_sr=SR)
    power = np.abs(np.fft.rfft(back)) ** 2
    f = np.fft.rfftfreq(len(back), 1 / SR)
    assert power[f > 4200].sum() < 1e-3 * power.sum()


def test_drawn_chains_span_the_conditions_the_evaluation_tests():
    chains = [draw(random.Random(i)) for i in range(400)]
    gains = [c.gain_db for c in chains]
    assert min(gains) < -18 and max(gains) > 10  # covers -20 dB and +10 dB
    assert 0.35 < np.mean([c.snr_db is not None for c in chains]) < 0.65
    assert {c.sample_rate for c in chains} == set(acoustics.RATES)
    reference, *changes = EVAL_CONDITIONS.values()
    assert reference == Acoustics()  # the first is the clip as rendered
    for condition in changes:  # each other condition changes exactly one setting, so each is reported alone
        moved = [k for k, v in vars(condition).items() if v != vars(reference)[k]]
        assert len(moved) == 1, moved


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match="noise must be one of"):
        Acoustics(noise="purple")
    with pytest.raises(ValueError, match="rt60 must be in"):
        Acoustics(rt60=10.0)
    with pytest.raises(ValueError, match="sample_rate must be in"):
        Acoustics(sample_rate=100)


def make_corpus(folder, n=6):
    (folder / "wav").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"wav/s{i}_v_happy.wav"
        sf.write(folder / name, tone(1.0, 22050, 150 + 20 * i), 22050, subtype="PCM_16")
        rows.append({"audio": name, "text": f"sentence {i}", "emotion": "happy"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_a_recorded_corpus_is_seeded_per_clip_and_resumes(tmp_path):
    manifest = make_corpus(tmp_path / "clean")
    out = record_corpus(manifest, tmp_path / "rec", seed=7, workers=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == [f"sentence {i}" for i in range(6)]
    for r in rows:
        info = sf.info(out.parent / r["audio"])
        assert info.samplerate == r["acoustics"]["sample_rate"] and info.subtype == "PCM_16"
    first = {r["audio"]: (out.parent / r["audio"]).read_bytes() for r in rows}
    # Another run with the same seed, in one worker, after losing one clip: the same bytes.
    (out.parent / rows[2]["audio"]).unlink()
    before = (out.parent / rows[0]["audio"]).stat().st_mtime_ns
    record_corpus(manifest, tmp_path / "rec", seed=7, workers=1)
    assert {r["audio"]: (out.parent / r["audio"]).read_bytes() for r in rows} == first
    assert (out.parent / rows[0]["audio"]).stat().st_mtime_ns == before  # kept, not rewritten
    # A fixed chain for every clip (an evaluation condition).
    fixed = record_corpus(manifest, tmp_path / "quiet", chain=EVAL_CONDITIONS["-20 dB"])
    quiet = [json.loads(line) for line in fixed.read_text().splitlines()]
    assert all(r["acoustics"]["gain_db"] == -20.0 for r in quiet)
    a, _ = sf.read(manifest.parent / "wav/s0_v_happy.wav")
    b, _ = sf.read(fixed.parent / quiet[0]["audio"])
    assert level_dbfs(b) - level_dbfs(a) == pytest.approx(-20.0, abs=0.1)
