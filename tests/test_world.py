"""`python -m train world` at CI size, on tiny bases written here (a random Whisper, a tiny chat LM)."""

import json

import pytest
import soundfile as sf
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

import tiny
from train.demo_world.bases_build import SCALES, build_world


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A random tiny Whisper in the Hugging Face layout, and a tiny chat LM trained for seconds on the
    demo sentences (a random LM would stop or babble whitespace, leaving the teacher nothing to say)."""
    from train.demo_world.build_steps import SCALES as SCRATCH_SCALES
    from train.demo_world.pretrain_lm import train_lm
    from train.demo_world.sentences import generate

    folder = tmp_path_factory.mktemp("bases")
    enc = tiny.encoder_config()
    sizes = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins")
    config = WhisperConfig(
        **{k: getattr(enc, k) for k in (*sizes, "max_source_positions")},
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=16, vocab_size=64, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(folder / "whisper")
    sentences = [(s.text, s.cue) for s in generate(12, 0, "train")]
    llm, tokenizer, _ = train_lm(sentences, SCRATCH_SCALES["ci"].lm, log=lambda *a: None)
    llm.save_pretrained(folder / "llm")
    tokenizer.save_pretrained(folder / "llm")
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
