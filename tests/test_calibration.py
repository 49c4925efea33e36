"""Temperature scaling, expected calibration error and the unsure threshold (blsp_emo/calibration.py),
and the temperature where BLSP-Emo's probabilities are made."""

import json
import warnings

import numpy as np
import pytest

from blsp_emo import calibration as cal


def overconfident(n=2000, classes=5, temperature=3.0, seed=0):
    """Logits whose calibrated form is softmax(logits / `temperature`): labels drawn from that."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, (n, classes))
    p = cal.softmax(true_logits)
    truth = np.array([rng.choice(classes, p=row) for row in p])
    return true_logits * temperature, truth


def test_ece_on_known_inputs():
    # Two clips in the (0.6, 0.667] bin, one right: |0.5 - 0.65| = 0.15; two at 0.9, both right: 0.1.
    probs = np.array([[0.65, 0.35], [0.65, 0.35], [0.9, 0.1], [0.1, 0.9]])
    truth = np.array([0, 1, 0, 1])
    assert cal.expected_calibration_error(probs, truth) == pytest.approx(0.5 * 0.15 + 0.5 * 0.1)
    assert cal.expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)
    assert cal.expected_calibration_error(np.eye(3), np.array([1, 2, 0])) == pytest.approx(1.0)
    # A top probability of 1.0 falls in the last bin, (14/15, 1], not past it.
    assert cal.expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_ece_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="expected probabilities"):
        cal.expected_calibration_error(np.ones((3, 2)) / 2, np.zeros(2, int))


def test_temperature_one_is_the_identity():
    logits, truth = overconfident(50)
    assert np.allclose(cal.softmax(logits, 1.0), cal.softmax(logits))
    assert cal.nll(logits, truth, 1.0) == pytest.approx(cal.nll(logits, truth))


def test_temperature_scaling_recovers_an_overconfident_sets_temperature():
    logits, truth = overconfident(temperature=3.0)
    t = cal.fit_temperature(logits, truth)
    assert t == pytest.approx(3.0, rel=0.15)
    assert cal.nll(logits, truth, t) < cal.nll(logits, truth)
    before = cal.expected_calibration_error(cal.softmax(logits), truth)
    after = cal.expected_calibration_error(cal.softmax(logits, t), truth)
    assert before > 0.15 and after < 0.05
    # The top class never moves: only how sure it is.
    assert (cal.softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_a_calibrated_set_keeps_a_temperature_near_one():
    logits, truth = overconfident(temperature=1.0, seed=1)
    assert cal.fit_temperature(logits, truth) == pytest.approx(1.0, abs=0.15)


def test_threshold_is_the_lowest_that_meets_the_target():
    rng = np.random.default_rng(2)
    top = rng.uniform(0.2, 1.0, 400)
    correct = rng.uniform(size=400) < top  # sure clips are right more often
    th = cal.choose_threshold(top, correct, 0.9)
    kept = top >= th.value
    assert correct[kept].mean() >= 0.9 and th.kept_share == pytest.approx(kept.mean())
    for lower in top[top < th.value]:  # no lower candidate keeps clips right 90 % of the time
        assert correct[top >= lower].mean() < 0.9
    # A higher target never gives a lower threshold; one already met by all clips gives 0.
    assert cal.choose_threshold(top, correct, 0.95).value >= th.value
    assert cal.choose_threshold(top, correct, correct.mean()).value == 0.0


def test_threshold_unreachable_names_the_fix():
    with pytest.raises(ValueError, match="lower --target-accuracy"):
        cal.choose_threshold(np.array([0.9, 0.8]), np.array([False, True]), 0.99)


def test_calibration_file_round_trip_and_revision_check(tmp_path):
    assert cal.load_calibration(tmp_path) is cal.IDENTITY  # no file: T = 1
    written = cal.Calibration(1.5, 0.6, "blsp-emo@abc", report={"test": {"ece_after": 0.01}}, command="python -m ...")
    cal.save_calibration(written, tmp_path)
    assert cal.load_calibration(tmp_path, "blsp-emo@abc") == written
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cal.load_calibration(tmp_path, "blsp-emo@other") is cal.IDENTITY
    assert "rerun" in str(caught[0].message) and "blsp-emo@abc" in str(caught[0].message)
    (tmp_path / cal.CALIBRATION_FILE).write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match="rerun calibrate"):
        cal.load_calibration(tmp_path)


def test_blsp_emo_shows_probabilities_at_the_fitted_temperature(model_dir, clip_path):
    import torch

    from blsp_emo.audio import load_audio
    from blsp_emo.model.processor import clip_features
    from blsp_emo.systems import load_system

    system = load_system("blsp-emo", model_dir)
    assert system.calibration is cal.IDENTITY
    clip = load_audio(clip_path, system.window_seconds)
    with torch.inference_mode():
        logits = system.model.emotion_logits(system.model.encode_speech(*clip_features([clip], system.model.config)))
    heard, _ = system._answer(system._user_turn(clip, None), (), _options(), 0)
    assert list(heard.emotion_scores.values()) == pytest.approx(cal.softmax(logits.numpy())[0].tolist(), abs=1e-5)
    try:
        cal.save_calibration(cal.Calibration(2.0, 0.5, system.revision()), model_dir)
        warm = load_system("blsp-emo", model_dir)
        assert warm.calibration.temperature == 2.0
        heard, _ = warm._answer(warm._user_turn(clip, None), (), _options(), 0)
        assert list(heard.emotion_scores.values()) == pytest.approx(
            cal.softmax(logits.numpy(), 2.0)[0].tolist(), abs=1e-5
        )
    finally:
        (model_dir / cal.CALIBRATION_FILE).unlink()


def _options():
    from blsp_emo.options import GenerationOptions

    return GenerationOptions(max_new_tokens=1, greedy=True)


def test_calibrate_command_writes_the_file_load_system_reads(model_dir, tmp_path, capsys):
    import soundfile as sf

    import tiny
    from blsp_emo.__main__ import main
    from blsp_emo.emotion import EMOTIONS
    from blsp_emo.evidence_cli import head_logits
    from blsp_emo.systems import load_system

    manifest = tmp_path / "held_out.jsonl"
    paths = []
    for k, freq in enumerate(range(120, 400, 20)):
        sf.write(tmp_path / f"c{k}.wav", tiny.tone(1.0 + k % 3, float(freq)), 16000)
        paths.append(f"c{k}.wav")
    manifest.write_text("".join(json.dumps({"audio": p, "emotion": "neutral"}) + "\n" for p in paths))
    system = load_system("blsp-emo", model_dir)
    logits, _ = head_logits(system.model, manifest)
    # Label most clips as the random head hears them, two not: a set it is mostly right on.
    labels = [EMOTIONS[i] for i in logits.argmax(1)]
    labels[:2] = [EMOTIONS[(EMOTIONS.index(e) + 1) % 5] for e in labels[:2]]
    manifest.write_text("".join(json.dumps({"audio": p, "emotion": e}) + "\n" for p, e in zip(paths, labels)))
    out = tmp_path / "calibration.json"
    args = ["calibrate", "--model", str(model_dir), "--manifest", str(manifest), "--target-accuracy", "0.8"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = cal.read_calibration(out)
    assert printed["temperature"] == written.temperature > 0 and written.model_revision == system.revision()
    fit = written.report["fit"]
    assert fit["n"] == len(paths) and fit["accuracy"] == pytest.approx(1 - 2 / len(paths), abs=1e-3)
    assert written.unsure_below is not None and written.command.startswith("python -m blsp_emo calibrate")
    assert main(["calibrate", "--model", str(model_dir), "--manifest", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl does not exist; make one with" in capsys.readouterr().err
