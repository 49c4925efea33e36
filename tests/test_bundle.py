import torch

import tiny
from blsp_emo.model.checkpoint import load_model, load_pretrained, save_model
from blsp_emo.systems.asr import CtcRecognizer
from blsp_emo.systems.ser import WhisperEmotionClassifier
from train.demo_world.bundle import SHARED_DIR, bundle


def components(tmp_path, tokenizer):
    """Work folders as the demo build leaves them: blsp keeps the ASR encoder and blsp-emo's LLM."""
    emo, _ = tiny.model(seed=0, tok=tokenizer)
    semantic, _ = tiny.model(seed=1, lora_rank=0, tok=tokenizer)
    asr, ser = tiny.asr(seed=2), tiny.ser(seed=3)
    semantic.llm.load_state_dict(emo.llm.state_dict())
    semantic.encoder.load_state_dict(asr.encoder.state_dict())
    save_model(emo, tokenizer, tmp_path / "work" / "stage2")
    save_model(semantic, tokenizer, tmp_path / "work" / "stage1")
    asr.save_pretrained(tmp_path / "work" / "asr")
    ser.save_pretrained(tmp_path / "work" / "ser")
    parts = {"blsp-emo": "stage2", "blsp": "stage1", "asr": "asr", "ser": "ser"}
    return {name: tmp_path / "work" / folder for name, folder in parts.items()}, {
        "blsp-emo": emo,
        "blsp": semantic,
        "asr": asr,
        "ser": ser,
    }


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_shared_tensors_are_stored_once_and_every_component_loads_whole(tmp_path, tokenizer):
    parts, models = components(tmp_path, tokenizer)
    out = tmp_path / "bundle"
    sizes = bundle(parts, out)
    shared = {p.name for p in (out / SHARED_DIR).iterdir()}
    # and e.g. the fixed sinusoidal positions and freshly initialised norms, equal in all four
    assert {"asr+blsp.safetensors", "blsp+blsp-emo.safetensors"} <= shared
    llm_bytes = sum(t.numel() * t.element_size() for t in models["blsp"].llm.state_dict().values())
    assert sizes["safetensors_bytes_stored"] < sizes["tensor_bytes_copied"] - llm_bytes  # stored once, not twice
    assert_same_state(load_model(str(out / "blsp-emo"))[0], models["blsp-emo"])
    assert_same_state(load_model(str(out / "blsp"))[0], models["blsp"])
    assert_same_state(load_pretrained(CtcRecognizer, out / "asr"), models["asr"])
    assert_same_state(load_pretrained(WhisperEmotionClassifier, out / "ser"), models["ser"])


def test_rebundling_replaces_what_was_there(tmp_path, tokenizer):
    parts, models = components(tmp_path, tokenizer)
    out = tmp_path / "bundle"
    bundle(parts, out)
    (out / SHARED_DIR / "stale.safetensors").write_bytes(b"old")
    bundle({"blsp-emo": parts["blsp-emo"], "asr": parts["asr"]}, out)  # nothing shared between these two
    assert not (out / SHARED_DIR / "stale.safetensors").exists()
    assert_same_state(load_model(str(out / "blsp-emo"))[0], models["blsp-emo"])
