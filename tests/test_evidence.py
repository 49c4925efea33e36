"""The evidence behind a heard emotion (blsp_emo/evidence.py, prosody_reading.py): prosody measured on
signals whose pitch, level and syllable rate are known, the neutral reference, the unsure state, the
words/tone flag's logic, and `respond --evidence`."""

import json
import math

import numpy as np
import pytest

from blsp_emo import evidence as ev
from blsp_emo.calibration import Calibration, save_calibration
from blsp_emo.lexical_emotion import LexicalEmotion
from blsp_emo.prosody_reading import (
    MEASURES,
    REFERENCE_FILE,
    build_reference,
    compare,
    load_reference,
    neutral_clips,
    read_prosody,
    save_reference,
)

RATE = 16000


def voiced(seconds, f0=150.0, amp=0.1):
    """A steady voiced sound: five harmonics of `f0`, peak amplitude `amp`."""
    t = np.arange(int(RATE * seconds)) / RATE
    x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    return (amp * x / np.abs(x).max()).astype(np.float32)


def syllables(n, period, f0=150.0, amp=0.3):
    """`n` voiced bursts, one every `period` s (on for 60 % of it), between 0.5 s of silence each side."""
    on = 0.6 * period
    x = np.zeros(int(RATE * (1.0 + n * period)), np.float32)
    burst = voiced(on, f0, amp) * np.sin(np.pi * np.arange(int(RATE * on)) / (RATE * on)).astype(np.float32)
    for k in range(n):
        start = int(RATE * (0.5 + k * period))
        x[start : start + burst.size] = burst
    return x, n / ((n - 1) * period + on)  # the rate over the sounding time


def test_pitch_and_loudness_of_a_known_tone():
    t = np.arange(RATE * 2) / RATE
    reading = read_prosody(RATE, (0.1 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))
    assert reading.median_pitch_hz == pytest.approx(200, rel=0.01)
    assert reading.pitch_range_st == pytest.approx(0, abs=0.1)
    assert reading.loudness_db == pytest.approx(20 * math.log10(0.1 / math.sqrt(2)), abs=0.1)  # -23 dB


def test_pitch_range_of_a_glide_in_semitones():
    t = np.arange(RATE * 2) / RATE
    f0 = 100 * 2 ** (t / 2)  # one octave up over 2 s
    reading = read_prosody(RATE, (0.1 * np.sin(2 * np.pi * np.cumsum(f0) / RATE)).astype(np.float32))
    assert reading.pitch_range_st == pytest.approx(12 * 0.9, abs=0.5)  # 5th..95th percentile of 12 st
    assert reading.median_pitch_hz == pytest.approx(100 * 2**0.5, rel=0.03)


@pytest.mark.parametrize("n, period", [(6, 1 / 3), (8, 0.25), (10, 0.2)])
def test_speaking_rate_counts_syllables_per_sounding_second(n, period):
    x, rate = syllables(n, period)
    reading = read_prosody(RATE, x)
    assert reading.syllables == n
    assert reading.speaking_rate == pytest.approx(rate, rel=0.05)
    # Silence around the speech (a hands-free pause) changes nothing.
    padded = read_prosody(RATE, np.concatenate([np.zeros(RATE, np.float32), x, np.zeros(2 * RATE, np.float32)]))
    assert padded.speaking_rate == pytest.approx(reading.speaking_rate, rel=0.01)


def test_silence_has_no_pitch_and_no_syllables():
    reading = read_prosody(RATE, np.zeros(RATE, np.float32))
    assert reading.median_pitch_hz is None and reading.pitch_range_st is None
    assert reading.loudness_db == -math.inf and reading.speaking_rate == 0.0


def reference():
    """A reference from tones: 120..180 Hz, -26..-20 dB, 3.4..5.2 syllables/s."""
    clips = [(8, 1 / 3, 120, 0.1), (8, 0.25, 150, 0.15), (8, 0.2, 180, 0.2)]
    readings = [read_prosody(RATE, syllables(n, period, f0, amp)[0]) for n, period, f0, amp in clips]
    return build_reference(readings, "tones", "python -m blsp_emo evidence-reference ...")


def test_reference_round_trip_and_comparisons(tmp_path):
    ref = reference()
    save_reference(ref, tmp_path / REFERENCE_FILE)
    again = load_reference(tmp_path / REFERENCE_FILE)
    assert again.spreads == ref.spreads and again.command.startswith("python -m blsp_emo")
    assert ref.spreads["median_pitch_hz"].median == pytest.approx(150, rel=0.01)
    same = {c.measure: c for c in compare(read_prosody(RATE, syllables(8, 0.25, 150, 0.15)[0]), ref)}
    assert set(same) == set(MEASURES)  # a steady tone's pitch range is noise: its direction is not checked
    assert {same[m].direction for m in ("median_pitch_hz", "loudness_db", "speaking_rate")} == {"typical"}
    # An octave up, louder and faster than every reference clip.
    fast, fast_rate = syllables(12, 1 / 6, 300, 0.6)
    high = {c.measure: c for c in compare(read_prosody(RATE, fast), ref)}
    assert high["median_pitch_hz"].difference == pytest.approx(12, abs=0.3) and high["median_pitch_hz"].unit == "st"
    assert high["median_pitch_hz"].percentile == 100 and high["median_pitch_hz"].direction == "higher"
    assert high["loudness_db"].direction == "higher" and high["loudness_db"].unit == "dB"
    median_rate = ref.spreads["speaking_rate"].median
    assert high["speaking_rate"].difference == pytest.approx(100 * (fast_rate / median_rate - 1), abs=3)
    assert high["speaking_rate"].unit == "%" and high["speaking_rate"].direction == "higher"
    low = {c.measure: c for c in compare(read_prosody(RATE, syllables(4, 0.5, 90, 0.03)[0]), ref)}
    assert {low[m].direction for m in ("median_pitch_hz", "loudness_db", "speaking_rate")} == {"lower"}


def test_reference_errors_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json.*evidence-reference"):
        load_reference(tmp_path / "bad.json")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "emotion": "sad"}) + "\n")
    with pytest.raises(ValueError, match="no clip with emotion 'neutral'"):
        neutral_clips(manifest)


def test_unsure_below_the_threshold():
    scores = {"neutral": 0.1, "happy": 0.55, "angry": 0.15, "sad": 0.1, "surprise": 0.1}
    assert ev.sureness(scores, 0.6).unsure and ev.sureness(scores, 0.6).emotion == "happy"
    assert not ev.sureness(scores, 0.5).unsure
    assert not ev.sureness(scores, None).unsure  # no calibration: never unsure
    assert ev.sureness({}, 0.6).emotion is None


def lexical(emotion, p, text="the letter is at the front desk"):
    return LexicalEmotion(text, emotion, p, {emotion: p})


def test_words_tone_flag():
    assert not ev.words_tone(lexical("neutral", 0.9), "neutral").disagree  # neutral words, neutral tone
    for tone in ("happy", "angry", "sad", "surprise"):  # neutral words, marked tone: the flag
        assert ev.words_tone(lexical("neutral", 0.9), tone).disagree
    assert not ev.words_tone(lexical("sad", 0.8), "sad").disagree
    assert ev.words_tone(lexical("happy", 0.8), "neutral").disagree  # the words speak, the voice does not
    unclear = ev.words_tone(lexical("happy", 0.34), "neutral")  # a guess under 50 % counts as neutral words
    assert unclear.words == "neutral" and not unclear.disagree


def test_describe_and_json():
    x, _ = syllables(8, 0.25)
    kit = ev.EvidenceKit(reference=reference(), threshold=0.6)
    e = kit.read(x, {"neutral": 0.2, "happy": 0.1, "angry": 0.1, "sad": 0.5, "surprise": 0.1})
    e = ev.Evidence(e.prosody, e.comparisons, e.sureness, ev.words_tone(lexical("neutral", 0.9), "sad"))
    lines = ev.describe(e).splitlines()
    assert lines[0].startswith("Unsure: the likeliest emotion, sad, has 50%")
    assert lines[1] == "The words are neutral, the voice sounds sad."
    assert any(line.startswith("Speaking rate ") and "neutral median" in line for line in lines)
    out = json.loads(json.dumps(ev.to_json(e)))
    assert out["sureness"]["unsure"] and out["words_tone"]["disagree"] and len(out["comparisons"]) == 4
    silent = ev.EvidenceKit().read(np.zeros(RATE, np.float32), {"neutral": 1.0})
    assert json.loads(json.dumps(ev.to_json(silent)))["prosody"]["loudness_db"] is None  # not -Infinity
    assert silent.words_tone is None and silent.comparisons == ()


def test_kit_finds_its_files_beside_the_model_or_in_the_bundle(tmp_path):
    folder = tmp_path / "blsp-emo"
    folder.mkdir()
    assert ev.load_kit(folder) == ev.EvidenceKit()
    save_reference(reference(), tmp_path / REFERENCE_FILE)  # the bundle's, shared by its models
    save_calibration(Calibration(1.3, 0.61, "rev"), folder)
    kit = ev.load_kit(folder, revision="rev")
    assert kit.threshold == 0.61 and kit.reference is not None and kit.classifier is None
    with pytest.warns(UserWarning, match="rerun"):
        assert ev.load_kit(folder, revision="other").threshold is None


def test_respond_json_evidence(bundle_dir, clip_path, capsys):
    from blsp_emo.__main__ import main

    save_reference(reference(), bundle_dir / REFERENCE_FILE)
    try:
        assert (
            main(
                ["respond", str(clip_path), "--model", str(bundle_dir), "--json", "--evidence", "--max-new-tokens", "2"]
            )
            == 0
        )
    finally:
        (bundle_dir / REFERENCE_FILE).unlink()
    out = json.loads(capsys.readouterr().out)
    assert out["evidence"]["sureness"]["emotion"] == out["emotion"]
    assert out["evidence"]["prosody"]["median_pitch_hz"] > 0 and len(out["evidence"]["comparisons"]) == 4
    assert out["evidence"]["words_tone"] is None  # no text classifier beside this model


def test_importing_the_evidence_imports_neither_torch_nor_gradio():
    import subprocess
    import sys

    code = "import sys, blsp_emo.evidence; print(sorted({'torch', 'gradio'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr  # torch loads only when words are read (MiniLM)
