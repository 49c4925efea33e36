"""`python -m train world` at CI size, on tiny bases written here (a random Whisper, a tiny chat LM)."""

import json

import pytest
import soundfile as sf

import tiny
from train.demo_world.bases_build import SCALES, build_world


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bases")
    tiny.write_bases(folder, chat_lm=True)
    return folder


@pytest.mark.slow
def test_the_world_builds_on_given_bases_and_resumes(bases, tmp_path, monkeypatch):
    monkeypatch.setenv("BLSP_EMO_CACHE", str(tmp_path / "cache"))
    work, scale = tmp_path / "work", SCALES["ci"]
    lines = []
    parts = build_world(work, scale, str(bases / "whisper"), str(bases / "llm"), log=lines.append)

    rows = [json.loads(line) for line in parts["train"].read_text().splitlines()]
    assert rows and all("acoustics" in r for r in rows)
    for r in rows:  # every clip recorded through its own chain, at the chain's rate
        assert sf.info(parts["train"].parent / r["audio"]).samplerate == r["acoustics"]["sample_rate"]
    for name in ("blsp-emo", "blsp"):
        training = json.loads((parts[name] / "training.json").read_text())
        assert training["steps"] == (scale.stage2_steps if name == "blsp-emo" else scale.stage1_steps)
    config = json.loads((parts["blsp-emo"] / "config.json").read_text())
    assert config["lora_rank"] > 0 and config["encode_full_window"] is False
    assert set(config["bases"]) == {"encoder", "llm"}  # the composite names what it was built on
    assert (parts["ser"] / "config.json").is_file()

    # A rerun finds every step done; only the recording step looks (and keeps every clip).
    lines.clear()
    again = build_world(work, scale, str(bases / "whisper"), str(bases / "llm"), log=lines.append)
    assert again == parts
    assert not [line for line in lines if line.endswith("...") and "recording" not in line]
