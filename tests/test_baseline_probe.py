"""`python -m train baseline-probe`: a voice's other clips as a baseline, measured before it is built."""

import json

import numpy as np
import pytest
import soundfile as sf

from train.__main__ import main as train_main
from train.demo_world.baseline_probe import Clips, parse_turns, with_baseline

RATE = 16_000


def _voiced(f0: float, seconds: float = 0.6) -> np.ndarray:
    """A buzz at `f0` in three syllable-like bursts: Praat hears its pitch and its nuclei."""
    t = np.arange(int(RATE * seconds)) / RATE
    buzz = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6))
    bursts = 0.5 - 0.5 * np.cos(2 * np.pi * 3 / seconds * t)
    return (0.2 * buzz * bursts).astype(np.float32)


def _manifest(folder, voices: dict[str, float], rng) -> str:
    """Clips whose tone is only their pitch against the voice's own: happy is 1.4 times neutral."""
    folder.mkdir()
    lines = []
    for voice, base in voices.items():
        for take in range(3):
            for emotion, ratio in (("neutral", 1.0), ("happy", 1.4)):
                path = folder / f"{voice}_{emotion}_{take}.wav"
                sf.write(path, _voiced(base * ratio * rng.uniform(0.97, 1.03)), RATE)
                lines.append(json.dumps({"audio": path.name, "emotion": emotion, "voice": voice}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return str(manifest)


def test_a_voices_baseline_separates_tone_from_a_pitch_no_training_voice_had(tmp_path, capsys):
    rng = np.random.default_rng(0)
    # Held-out voices sit between the training ones: the neutral of one is the happy of another.
    train = _manifest(tmp_path / "train", {"low": 100.0, "mid": 150.0, "high": 210.0}, rng)
    held_out = _manifest(tmp_path / "eval", {"a": 125.0, "b": 175.0}, rng)
    out = tmp_path / "probe.json"
    args = ["baseline-probe", "--train", train, "--eval", held_out, "--turns", "0,all", "--out", str(out)]
    assert train_main(args) == 0
    results = {r["turns"]: r["accuracy"] for r in json.loads(out.read_text())["results"]}
    assert results["all"] >= 0.9 and results["all"] > results[0]
    assert "prosody" in capsys.readouterr().out


def test_with_a_model_the_heads_input_is_probed_too(tmp_path, model_dir, monkeypatch):
    import blsp_emo.model.checkpoint as checkpoint

    loads = []
    load_model = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: loads.append(a) or load_model(*a, **k))
    rng = np.random.default_rng(1)
    train = _manifest(tmp_path / "train", {"low": 100.0, "high": 210.0}, rng)
    held_out = _manifest(tmp_path / "eval", {"a": 150.0}, rng)
    out = tmp_path / "probe.json"
    args = ["baseline-probe", "--train", train, "--eval", held_out, "--eval", held_out, "--turns", "0"]
    assert train_main([*args, "--model", str(model_dir), "--out", str(out)]) == 0
    assert len(loads) == 1  # one model for every manifest
    results = json.loads(out.read_text())["results"]
    assert {r["features"] for r in results} == {"prosody", "adapter", "prosody+adapter"}
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 6 for r in results)


def test_the_baseline_is_the_voices_other_clips_only():
    features = np.array([[1.0], [3.0], [5.0], [100.0]])
    clips = Clips(features, np.zeros(4, int), np.array(["v", "v", "v", "w"]))
    joined = with_baseline(clips, None)
    assert joined[:, 0].tolist() == features[:, 0].tolist()
    assert joined[:3, 1].tolist() == [1 - 4, 3 - 3, 5 - 2]  # the median of the other two, not itself
    assert joined[3, 1] == 100 - 4  # a voice heard once: the population's median stands in
    assert (with_baseline(clips, 0) == features).all()
    one = with_baseline(clips, 1, seed=3)[:3, 1]
    assert all(d in {f - o for o in (1, 3, 5) if o != f} for f, d in zip((1, 3, 5), one))


def test_bad_options_name_the_value(tmp_path, capsys):
    assert parse_turns("0, 4 ,all") == (0, 4, None)
    for bad in ("", "two", "-1"):
        with pytest.raises(ValueError, match="--turns"):
            parse_turns(bad)
    manifest = tmp_path / "m.jsonl"
    (tmp_path / "x.wav").write_bytes(b"")
    manifest.write_text(json.dumps({"audio": "x.wav", "emotion": "sad"}) + "\n")
    assert train_main(["baseline-probe", "--train", str(manifest), "--eval", str(manifest)]) == 2
    assert "m.jsonl:1: needs an `emotion` and a `voice`" in capsys.readouterr().err
    manifest.write_text("")
    assert train_main(["baseline-probe", "--train", str(manifest), "--eval", str(manifest)]) == 2
    assert "has no rows" in capsys.readouterr().err
    (tmp_path / "x.wav").write_bytes(b"RIFF not really a wave file")  # corrupt
    manifest.write_text(json.dumps({"audio": "x.wav", "emotion": "sad", "voice": "v"}) + "\n")
    assert train_main(["baseline-probe", "--train", str(manifest), "--eval", str(manifest)]) == 2
    assert "x.wav" in capsys.readouterr().err
    sf.write(
        tmp_path / "x.wav", np.zeros(RATE, np.float32) + 0.01 * np.random.default_rng(0).standard_normal(RATE), RATE
    )
    assert train_main(["baseline-probe", "--train", str(manifest), "--eval", str(manifest)]) == 2
    assert "no clip of the set has a voiced frame" in capsys.readouterr().err
