"""Llama-family LLMs (GGUF or Hugging Face safetensors) as the project's `Qwen2ForCausalLM`.

The model's LLM slot is `Qwen2ForCausalLM`: the lean decode step, batching, prefix cache and the
audio-scoped LoRA are written against it. A Llama decoder is a Qwen2 decoder without q/k/v biases,
so a Llama checkpoint loads into that slot with the three biases set to zero and computes the same
logits. GGUF is llama.cpp's format: metadata under `llama.*` / `tokenizer.*` keys, tensors named
`blk.N.attn_q.weight` etc., possibly block-quantized, with q/k rows reordered for llama.cpp's RoPE.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.initialization import no_init_weights

# GGUF tensor stems -> Qwen2 module paths (llama.cpp's names for HF Llama's modules).
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4  # llama.cpp's token types (1 is a normal BPE token)
# `tokenizer.ggml.pre` values whose split llama.cpp defines as the GPT-2 regex, optionally after
# cutting every digit apart (`\p{N}` first). Other splits would tokenize differently: refused.
_GPT2_SPLIT = {"gpt-2"}
_DIGITS_THEN_GPT2_SPLIT = {"smollm", "starcoder", "refact", "codeshell"}
_MISSING = object()


def _where(reader: gguf.GGUFReader) -> str:
    """The file a reader reads, for error messages (GGUFReader memory-maps it)."""
    return str(getattr(reader.data, "filename", "<gguf>"))


def _field(reader: gguf.GGUFReader, key: str, default=_MISSING):
    field = reader.fields.get(key)
    if field is not None:
        return field.contents()
    if default is _MISSING:
        raise ValueError(f"{_where(reader)}: GGUF metadata lacks {key!r}")
    return default


def _rope_parameters(reader: gguf.GGUFReader, theta: float) -> dict:
    """RoPE as Qwen2 expresses it; refuse scalings whose GGUF form Qwen2 cannot reproduce."""
    where = _where(reader)
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        # Llama-3.1-style per-frequency factors: stored as a tensor, no Qwen2 config field holds them.
        raise ValueError(f"{where}: tensor 'rope_freqs.weight' (per-frequency RoPE scaling) is not supported")
    kind = _field(reader, "llama.rope.scaling.type", "none")
    factor = float(_field(reader, "llama.rope.scaling.factor", _field(reader, "llama.rope.scale_linear", 1.0)))
    if kind == "linear" or (kind == "none" and factor != 1.0):
        return {"rope_type": "linear", "factor": factor, "rope_theta": theta}
    if kind != "none":
        raise ValueError(f"{where}: llama.rope.scaling.type={kind!r} is not supported (only none or linear)")
    return {"rope_type": "default", "rope_theta": theta}


def llama_config_from_gguf(reader: gguf.GGUFReader) -> Qwen2Config:
    """The Qwen2 config that computes what the GGUF's Llama computes (q/k/v biases will be zero)."""
    where = _where(reader)
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
        raise ValueError(f"{where}: general.architecture is {architecture!r}; only 'llama' loads as Qwen2")
    if int(_field(reader, "llama.expert_count", 0)) > 0:
        raise ValueError(f"{where}: llama.expert_count > 0 (a mixture of experts) is not supported")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    head_dim = int(_field(reader, "llama.attention.key_length", hidden // heads))
    if int(_field(reader, "llama.attention.value_length", head_dim)) != head_dim:
        raise ValueError(f"{where}: llama.attention.value_length differs from key_length; Qwen2 needs them equal")
    if int(_field(reader, "llama.rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"{where}: llama.rope.dimension_count < head size (partial RoPE) is not supported")
    layers = int(_field(reader, "llama.block_count"))
    extra = {"head_dim": head_dim} if head_dim != hidden // heads else {}
    return Qwen2Config(
        vocab_size=len(_field(reader, "tokenizer.ggml.tokens")),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        hidden_act="silu",
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_parameters=_rope_parameters(reader, float(_field(reader, "llama.rope.freq_base", 10000.0))),
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        # llama.cpp writes `output.weight` only when the LM head is not the embedding matrix.
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        use_sliding_window=False,
        max_window_layers=layers,
        attention_dropout=0.0,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id", None),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id", None),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id", None),
        **extra,
    )


def qwen2_name(gguf_name: str, where: str = "<gguf>") -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`, and so on."""
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{kind}"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match and match.group(2) in _LAYER_TENSORS:
        return f"model.layers.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}.{kind}"
    raise ValueError(f"{where}: tensor {gguf_name!r} has no place in a Llama model")


def tensor_values(tensor) -> np.ndarray:
    """A GGUF tensor as float32 in PyTorch's (out, in) layout.

    ggml lists dimensions fastest-first (`[in, out]`); the reader's array is row-major, one row per
    output feature, and for quantized types holds each row's blocks as raw bytes.
    """
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    # A copy: F32 data is a read-only view into the memory-mapped file.
    return np.array(values, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist())))


def unpermute_rope_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k projection rows (weights or biases), head by head.

    HF Llama rotates dimension i of a head with i + d/2 (`rotate_half`); ggml's RoPE rotates
    adjacent pairs (2i, 2i+1). So llama.cpp's converter reorders each head's rows, in HF indexed by
    (which half, i), to (i, which half): `reshape(head, 2, d/2).swapaxes(1, 2)`. Swapping the same
    two axes of the stored (head, d/2, 2) view restores HF's order. For k the heads are the KV heads.
    """
    half = rows.shape[0] // n_head // 2
    return rows.reshape(n_head, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_weights(reader: gguf.GGUFReader, config: Qwen2Config) -> dict[str, torch.Tensor]:
    """Every tensor of the file under its Qwen2 name, dequantized, q/k rows back in HF order."""
    where, weights = _where(reader), {}
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for tensor in reader.tensors:
        name = qwen2_name(tensor.name, where)
        if name in weights:
            raise ValueError(f"{where}: tensor {tensor.name!r} appears twice")
        values = tensor_values(tensor)
        projection = name.split(".")[-2]
        if projection in heads:
            values = unpermute_rope_rows(values, heads[projection])
        weights[name] = torch.from_numpy(values)
    return weights


def _zero_missing_qkv_biases(config: Qwen2Config, weights: dict[str, torch.Tensor]) -> None:
    """Llama has no q/k/v biases; Qwen2 adds them, so zero biases make Qwen2 compute Llama."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    widths = {"q_proj": config.num_attention_heads * head_dim}
    widths["k_proj"] = widths["v_proj"] = config.num_key_value_heads * head_dim
    for layer in range(config.num_hidden_layers):
        for projection, width in widths.items():
            weights.setdefault(f"model.layers.{layer}.self_attn.{projection}.bias", torch.zeros(width))


def build_qwen2(config: Qwen2Config, weights: dict[str, torch.Tensor], where: str, dtype=torch.float32):
    """A `Qwen2ForCausalLM` with every parameter taken from `weights`, each exactly once."""
    weights = dict(weights)
    _zero_missing_qkv_biases(config, weights)
    # Random init of a 135M model takes ~8 s on two cores, and every parameter is overwritten below.
    with no_init_weights():
        model = Qwen2ForCausalLM(config)
    model.tie_weights()  # skipped with the init above; a tied head then shares the embedding
    params = dict(model.named_parameters())  # a tied lm_head is listed once, as the embedding
    missing, unexpected = sorted(params.keys() - weights.keys()), sorted(weights.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(f"{where}: missing tensors {missing[:8]}, unexpected tensors {unexpected[:8]}")
    with torch.no_grad():
        for name, param in params.items():
            if tuple(weights[name].shape) != tuple(param.shape):
                raise ValueError(
                    f"{where}: {name} has shape {tuple(weights[name].shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(weights[name])
    return model.to(dtype).eval()


def qwen2_from_gguf_reader(reader: gguf.GGUFReader, dtype=torch.float32) -> Qwen2ForCausalLM:
    """The model of an open GGUF (read it once for model and tokenizer: parsing takes seconds)."""
    config = llama_config_from_gguf(reader)
    return build_qwen2(config, gguf_weights(reader, config), _where(reader), dtype)


def load_gguf_llm(path: str | Path, dtype=torch.float32) -> Qwen2ForCausalLM:
    """A llama.cpp GGUF Llama (any dequantizable tensor type) as `Qwen2ForCausalLM`."""
    return qwen2_from_gguf_reader(gguf.GGUFReader(str(path)), dtype)


def _qwen2_config_from_llama(llama: LlamaConfig, where: str) -> Qwen2Config:
    """Llama's config as Qwen2's. Both models share the rotary code, so RoPE parameters carry over."""
    if llama.attention_bias or llama.mlp_bias:
        # Qwen2 has no o_proj or MLP biases to hold them.
        raise ValueError(f"{where}: a Llama with attention_bias/mlp_bias is not supported")
    if llama.hidden_act != "silu":
        raise ValueError(f"{where}: hidden_act={llama.hidden_act!r}; Qwen2 loads SiLU Llamas only")
    head_dim = llama.head_dim or llama.hidden_size // llama.num_attention_heads
    extra = {"head_dim": head_dim} if head_dim != llama.hidden_size // llama.num_attention_heads else {}
    return Qwen2Config(
        vocab_size=llama.vocab_size,
        hidden_size=llama.hidden_size,
        intermediate_size=llama.intermediate_size,
        num_hidden_layers=llama.num_hidden_layers,
        num_attention_heads=llama.num_attention_heads,
        num_key_value_heads=llama.num_key_value_heads,
        hidden_act="silu",
        rms_norm_eps=llama.rms_norm_eps,
        rope_parameters=dict(llama.rope_parameters),
        max_position_embeddings=llama.max_position_embeddings,
        tie_word_embeddings=llama.tie_word_embeddings,
        use_sliding_window=False,
        max_window_layers=llama.num_hidden_layers,
        attention_dropout=0.0,
        bos_token_id=llama.bos_token_id,
        eos_token_id=llama.eos_token_id,
        pad_token_id=llama.pad_token_id,
        **extra,
    )


def _safetensors_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory}: no *.safetensors files")
    weights = {}
    for file in files:
        with safe_open(str(file), framework="pt") as shard:
            for key in shard.keys():
                if key in weights:
                    raise ValueError(f"{directory}: tensor {key!r} appears in two files")
                weights[key] = shard.get_tensor(key)
    return weights


def load_safetensors_llm(directory: str | Path, dtype=torch.float32) -> Qwen2ForCausalLM:
    """A Hugging Face folder (config.json + *.safetensors) of a Llama or Qwen2 as `Qwen2ForCausalLM`."""
    directory = Path(directory)
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    if model_type == "llama":
        config = _qwen2_config_from_llama(LlamaConfig.from_pretrained(str(directory)), str(directory))
    elif model_type == "qwen2":
        config = Qwen2Config.from_pretrained(str(directory))
    else:
        raise ValueError(f"{directory}: config.json model_type is {model_type!r}; only 'llama' or 'qwen2' load")
    weights = _safetensors_weights(directory)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # some savers write the tied head too; it is the embedding
    return build_qwen2(config, weights, str(directory), dtype)


def _pre_tokenizer(kind: str, where: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # the GPT-2 regex
    if kind in _GPT2_SPLIT:
        return byte_level
    if kind in _DIGITS_THEN_GPT2_SPLIT:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    known = sorted(_GPT2_SPLIT | _DIGITS_THEN_GPT2_SPLIT)
    raise ValueError(f"{where}: tokenizer.ggml.pre={kind!r} is not supported (known: {known})")


def _post_processor(reader: gguf.GGUFReader, tokens: list[str]):
    """BOS/EOS around each text when the file asks for them (SmolLM2 asks for neither)."""
    ends = {}
    for end in ("bos", "eos"):
        token_id = _field(reader, f"tokenizer.ggml.{end}_token_id", None)
        if token_id is not None and _field(reader, f"tokenizer.ggml.add_{end}_token", False):
            ends[end] = (tokens[int(token_id)], int(token_id))
    if not ends:
        return None
    bos, eos = ([ends["bos"][0]] if "bos" in ends else []), ([ends["eos"][0]] if "eos" in ends else [])
    single = " ".join([*bos, "$A", *eos])
    pair = " ".join([*bos, "$A", *eos, *bos, "$B", *eos])
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(set(ends.values())))


def tokenizer_from_gguf_reader(reader: gguf.GGUFReader) -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer (`tokenizer.ggml.model` gpt2) described by an open GGUF."""
    where = _where(reader)
    if (kind := _field(reader, "tokenizer.ggml.model")) != "gpt2":
        raise ValueError(f"{where}: tokenizer.ggml.model is {kind!r}; only 'gpt2' (byte-level BPE) is supported")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    # Tokens are stored in GPT-2's printable byte alphabet ("Ġ" for a space), merges as "left right".
    merges = [tuple(merge.split(" ", 1)) for merge in _field(reader, "tokenizer.ggml.merges")]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = _pre_tokenizer(_field(reader, "tokenizer.ggml.pre", "gpt-2"), where)
    backend.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>) and user-defined ones are matched whole, never split into bytes.
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _TOKEN_CONTROL]
    )
    backend.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _TOKEN_USER_DEFINED]
    )
    if (post := _post_processor(reader, tokens)) is not None:
        backend.post_processor = post
    named = {}
    for role, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id", None)
        if token_id is not None:
            named[f"{role}_token"] = tokens[int(token_id)]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=_field(reader, "tokenizer.chat_template", None),
        model_max_length=int(_field(reader, "llama.context_length", 2048)),
        clean_up_tokenization_spaces=False,  # decode must give back the exact text
        **named,
    )


def load_gguf_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer of a GGUF, rebuilt offline from its metadata."""
    return tokenizer_from_gguf_reader(gguf.GGUFReader(str(path)))
