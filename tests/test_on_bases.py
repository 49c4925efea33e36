"""A model stored as its trained parts over bases named by hash: what is stored, what loads, what is refused."""

import copy
import json

import pytest
import torch
from safetensors import safe_open

import tiny
from blsp_emo.bases import sources
from blsp_emo.model.checkpoint import load_model
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.on_bases import TRAINED_FILE, TrainedPartsError, base_modules, load_on_bases, save_on_bases
from blsp_emo.model.processor import build_prompt
from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.model.weights import CorruptWeightsError
from blsp_emo.prompts import SYSTEM_EMPATHETIC, Speech, instruction_pieces
from train.init import build_composite


@pytest.fixture()
def composite(tmp_path, monkeypatch):
    """A composite on tiny bases, its new parts moved off their initial values as training would."""
    monkeypatch.setenv("BLSP_EMO_CACHE", str(tmp_path / "cache"))
    whisper, llm = tiny.write_bases(tmp_path / "bases")
    encoder, language_model = sources.prepare("encoder", str(whisper)), sources.prepare("llm", str(llm))
    model, tokenizer = build_composite(encoder, language_model, lora_rank=4, encode_full_window=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in [*model.adapter.parameters(), *model.lora.parameters(), *model.emotion_head.parameters()]:
            p.add_(torch.randn_like(p) * 0.05)
    return model, tokenizer


def logits(model: BlspEmoModel, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    clip = tiny.tone(1.5)
    prompt = build_prompt(tokenizer, instruction_pieces(SYSTEM_EMPATHETIC, "", Speech(0)), [clip], model.config)
    with torch.inference_mode():
        speech = model.encode_speech(prompt.input_features, prompt.frame_counts)
        return model.speech_forward(prompt, speech).logits, model.emotion_logits(speech)


def test_only_what_training_changed_is_stored_and_it_loads_back(composite, tmp_path):
    model, tokenizer = composite
    stored = save_on_bases(model, tokenizer, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / TRAINED_FILE), "pt") as f:
        names = list(f.keys())
    assert names and all(n.startswith(("adapter.", "lora.", "emotion_head.")) for n in names)
    full = sum(p.numel() for p in model.parameters())
    assert stored["bytes"] < 0.5 * full * 4  # not the bases

    again, _ = load_model(str(tmp_path / "m"))
    (a, ea), (b, eb) = logits(model, tokenizer), logits(again, tokenizer)
    assert torch.allclose(a, b, atol=2e-3) and torch.allclose(ea, eb, atol=2e-3)  # fp16-stored parts
    assert again.config.bases == model.config.bases


def test_the_base_tokenizer_is_referenced_and_a_changed_one_is_stored(composite, tmp_path):
    model, tokenizer = composite
    save_on_bases(model, tokenizer, tmp_path / "m")
    assert not (tmp_path / "m" / "tokenizer.json").exists()
    _, loaded = load_on_bases(tmp_path / "m")
    assert loaded.encode("the parcel is late") == tokenizer.encode("the parcel is late")

    changed = ChatTokenizer(copy.deepcopy(tokenizer.hf))  # a tokenizer training grew: the model needs its own
    changed.hf.add_tokens(["<|speech|>"])
    save_on_bases(model, changed, tmp_path / "n")
    _, own = load_on_bases(tmp_path / "n")
    assert (tmp_path / "n" / "tokenizer.json").is_file() and "<|speech|>" in own.hf.get_vocab()

    save_on_bases(model, tokenizer, tmp_path / "n")  # saved over with the base's again
    _, again = load_on_bases(tmp_path / "n")
    assert not (tmp_path / "n" / "tokenizer.json").exists() and "<|speech|>" not in again.hf.get_vocab()


def test_a_stage_that_changed_the_encoder_stores_it_and_keeps_the_shared_base_intact(composite, tmp_path):
    model, tokenizer = composite
    with torch.no_grad():
        model.encoder.layer_norm.weight.add_(0.5)
    save_on_bases(model, tokenizer, tmp_path / "m")
    loaded, _ = load_on_bases(tmp_path / "m")
    assert torch.allclose(loaded.encoder.layer_norm.weight, model.encoder.layer_norm.weight.half().float())
    # Another model on the same bases still gets the base encoder, not this model's.
    encoder, _, _ = base_modules(*(model.config.bases[k][f] for k in ("encoder", "llm") for f in ("source", "sha256")))
    assert not torch.equal(encoder.layer_norm.weight, loaded.encoder.layer_norm.weight)


def test_a_different_base_or_a_damaged_file_is_refused_by_name(composite, tmp_path):
    model, tokenizer = composite
    save_on_bases(model, tokenizer, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["bases"]["llm"]["sha256"] = "0" * 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(sources.BaseMismatchError, match="was built on the llm base"):
        load_on_bases(tmp_path / "m")

    save_on_bases(model, tokenizer, tmp_path / "n")
    (tmp_path / "n" / TRAINED_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptWeightsError, match=str(tmp_path / "n" / TRAINED_FILE)):
        load_on_bases(tmp_path / "n")


def test_a_file_missing_trained_tensors_is_refused(composite, tmp_path):
    from safetensors.torch import load_file, save_file

    model, tokenizer = composite
    save_on_bases(model, tokenizer, tmp_path / "m")
    state = load_file(str(tmp_path / "m" / TRAINED_FILE))
    save_file({k: v for k, v in state.items() if not k.startswith("emotion_head")}, str(tmp_path / "m" / TRAINED_FILE))
    with pytest.raises(TrainedPartsError, match="lacks trained tensors"):
        load_on_bases(tmp_path / "m")


def test_eight_bit_rows_are_within_half_a_step_and_an_all_zero_row_stays_zero():
    from blsp_emo.model.on_bases import dequantize, quantize

    torch.manual_seed(0)
    weight = torch.randn(6, 5, 3) * torch.logspace(-4, 0, 6)[:, None, None]  # rows of very different sizes
    weight[2] = 0
    values, scale = quantize(weight)
    assert values.dtype == torch.int8 and scale.shape == (6,)
    back = dequantize(values, scale)
    step = scale[:, None, None]
    assert torch.all((back - weight).abs() <= step / 2 + 1e-12)
    assert torch.equal(back[2], torch.zeros_like(back[2]))
    assert torch.equal(
        values.reshape(6, -1).abs().amax(dim=1)[[0, 1, 3, 4, 5]], torch.full((5,), 127, dtype=torch.int8)
    )


def test_a_model_stored_in_eight_bits_is_smaller_and_answers_as_it_did(composite, tmp_path):
    model, tokenizer = composite
    half = save_on_bases(model, tokenizer, tmp_path / "half")
    eight = save_on_bases(model, tokenizer, tmp_path / "eight", bits=8)
    assert eight["bytes"] < 0.75 * half["bytes"]
    with safe_open(str(tmp_path / "half" / TRAINED_FILE), "pt") as f:
        assert f.metadata() == {"format": "pt"}  # as before 8 bits existed: kept evaluations still match it
    with safe_open(str(tmp_path / "eight" / TRAINED_FILE), "pt") as f:
        assert f.metadata()["bits"] == "8"
        dtypes = {n: f.get_tensor(n).dtype for n in f.keys()}
    assert torch.int8 in dtypes.values() and torch.float16 in dtypes.values()  # big matrices / the rest

    again, _ = load_model(str(tmp_path / "eight"))
    (a, ea), (b, eb) = logits(model, tokenizer), logits(again, tokenizer)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9 and torch.allclose(ea, eb, atol=0.05)
    assert torch.equal(ea.argmax(-1), eb.argmax(-1))
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        save_on_bases(model, tokenizer, tmp_path / "four", bits=4)


def test_an_eight_bit_tensor_without_its_scales_is_refused_by_name(composite, tmp_path):
    from safetensors.torch import load_file, save_file

    model, tokenizer = composite
    save_on_bases(model, tokenizer, tmp_path / "m", bits=8)
    state = load_file(str(tmp_path / "m" / TRAINED_FILE))
    scale = next(k for k in state if k.endswith(".int8_row_scale"))
    save_file({k: v for k, v in state.items() if k != scale}, str(tmp_path / "m" / TRAINED_FILE))
    with pytest.raises(CorruptWeightsError, match="has no row scales"):
        load_on_bases(tmp_path / "m")


def test_a_stage_starts_from_a_bundled_model_on_its_own_copy_of_the_bases(tmp_path, monkeypatch):
    from train.stages import STAGES, init_model, with_encoder

    monkeypatch.setenv("BLSP_EMO_CACHE", str(tmp_path / "cache"))
    whisper, llm = tiny.write_bases(tmp_path / "bases")
    encoder, language_model = sources.prepare("encoder", str(whisper)), sources.prepare("llm", str(llm))
    stage1, tokenizer = build_composite(encoder, language_model, lora_rank=0, encode_full_window=False)
    with torch.no_grad():
        for p in stage1.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_on_bases(stage1, tokenizer, tmp_path / "blsp")  # as the bundle stores stage 1

    started, _ = init_model(tmp_path / "blsp", with_encoder(STAGES["stage2"], layers=1), lora_rank=4)
    assert started.lora is not None  # stage 2's fresh LoRA
    for name, value in stage1.adapter.state_dict().items():
        assert torch.allclose(started.adapter.state_dict()[name], value, atol=1e-3)  # stored in fp16
    shared, _ = load_model(str(tmp_path / "blsp"))  # what the app and the evaluation load
    layer = started.encoder.layers[-1].fc1.weight
    with torch.no_grad():
        layer.add_(1.0)  # a training step on the encoder's top layer
    assert not torch.equal(shared.encoder.layers[-1].fc1.weight, layer)  # the shared base is untouched
