"""`python -m blsp_emo` as a user runs it: real subprocesses, the documented JSON, clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import tiny

KEYS = {"file", "system", "emotion", "emotion_scores", "reply", "transcript", "timings"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.server  # every test runs the CLI in a subprocess


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run(
        [sys.executable, "-m", "blsp_emo", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_systems_lists_names():
    out = run("systems")
    assert out.returncode == 0 and out.stdout.split() == ["blsp-emo", "blsp", "cascade", "cascade-ser"]


def test_respond_json_greedy_is_reproducible(model_dir, clip_path):
    first = run("respond", clip_path, "--model", model_dir, "--json", "--greedy", "--max-new-tokens", "8")
    assert first.returncode == 0, first.stderr
    obj = json.loads(first.stdout)
    assert set(obj) == KEYS | {"token_ids"} and obj["file"] == str(clip_path)
    assert obj["system"] == "blsp-emo" and obj["transcript"] is None
    assert set(obj["timings"]) == {"first_token_s", "total_s"}
    assert sum(obj["emotion_scores"].values()) == pytest.approx(1.0, abs=1e-4)
    second = json.loads(
        run("respond", clip_path, "--model", model_dir, "--json", "--greedy", "--max-new-tokens", "8").stdout
    )
    assert second["token_ids"] == obj["token_ids"] and len(obj["token_ids"]) > 0


def test_respond_many_files_and_cascade_from_a_bundle(bundle_dir, clip_path, tmp_path):
    other = tmp_path / "other.wav"
    sf.write(other, tiny.tone(2.0, 300.0), 16000)
    out = run(
        "respond", clip_path, other, "--model", bundle_dir, "--system", "cascade-ser", "--json", "--max-new-tokens", "4"
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [o["file"] for o in lines] == [str(clip_path), str(other)]
    assert all(set(o) == KEYS and isinstance(o["transcript"], str) for o in lines)


BAD = {
    "empty.wav": lambda p: p.write_bytes(b""),
    "silent.wav": lambda p: sf.write(p, np.zeros(32000, np.float32), 16000),
    "nan.wav": lambda p: sf.write(p, np.full(32000, np.nan, np.float32), 16000, subtype="FLOAT"),
    "long.wav": lambda p: sf.write(p, tiny.tone(12.0), 16000),  # the tiny model's window is 10 s
    "picture.wav": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)),
}


def test_each_bad_input_is_one_line_and_the_good_one_is_still_answered(model_dir, clip_path, tmp_path):
    paths = []
    for name, make in sorted(BAD.items()):
        make(tmp_path / name)
        paths.append(tmp_path / name)
    out = run("respond", *paths, clip_path, "--model", model_dir, "--json", "--greedy", "--max-new-tokens", "2")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    errors = out.stderr.strip().splitlines()
    assert len(errors) == len(paths), out.stderr
    words = {
        "empty.wav": "empty",
        "long.wav": "window",
        "nan.wav": "NaN",
        "picture.wav": "not a readable",
        "silent.wav": "silent",
    }
    for path, line in zip(paths, errors):
        assert line.startswith(f"error: {path}: ") and words[path.name] in line
    assert json.loads(out.stdout)["file"] == str(clip_path)


def test_missing_model_and_bad_options_are_one_line(tmp_path, clip_path):
    out = run("respond", clip_path, "--model", tmp_path / "nowhere")
    assert out.returncode == 2 and out.stderr.startswith("error: model folder") and "Traceback" not in out.stderr
    out = run("respond", clip_path, "--model", tmp_path, "--temperature", "0")
    assert out.returncode == 2 and "temperature" in out.stderr and "Traceback" not in out.stderr
