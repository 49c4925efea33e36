"""Whisper in CTranslate2 format (a directory with model.bin, config.json, tokenizer.json, as faster-whisper ships
it) read into transformers: `load_ct2_whisper(dir)` -> WhisperForConditionalGeneration, `load_ct2_tokenizer(dir)`.

`model.bin` (little-endian, unpadded; written by ctranslate2/specs/model_spec.py, read by src/models/model.cc):
    u32 binary version | str spec name | u32 spec revision | u32 n_variables
    n_variables x (str name | u8 rank | rank x u32 dims | u8 dtype id | u32 n_bytes | n_bytes data)
    u32 n_aliases | n_aliases x (str alias | str target)
where str = u16 length (counting a trailing NUL) + UTF-8 bytes + NUL.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

# CTranslate2's DataType enum (include/ctranslate2/types.h): (name, bytes per item). numpy has no bfloat16.
_DTYPES = {0: ("float32", 4), 1: ("int8", 1), 2: ("int16", 2), 3: ("int32", 4), 4: ("float16", 2), 5: ("bfloat16", 2)}
_VERSIONS = range(4, 7)  # 4 introduced the dtype id + byte count read here; 6 is the newest known
_WHISPER_REVISION = 3  # the WhisperSpec revision the name mapping below was written for
# Structural flags of CTranslate2's Whisper decoder, at the value transformers' Whisper implies (activation 3 =
# GELU, no sqrt(d_model) embedding scale, no ALiBi). Newer converters write more of them, so absent = expected.
_EXPECTED_FLAGS = dict(activation=3, pre_norm=1, scale_embeddings=0, start_from_zero_embedding=0, alibi=0)
_EXPECTED_FLAGS.update(alibi_use_positive_positions=0, scale_alibi=0)
# Only used by CTranslate2's word-level timestamps; transformers' Whisper has no counterpart.
_METADATA = ("decoder/alignment_heads", "decoder/alignment_layer")


class _Cursor:
    """Reads little-endian fields from the bytes of one file, naming it in every error."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"{self.path}: truncated: {what} needs {n} bytes at {self.pos} of {len(self.data)}")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def uint(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.uint("H", what), what)
        if not raw or raw[-1] != 0:
            raise ValueError(f"{self.path}: corrupt {what} at offset {self.pos}: not NUL-terminated")
        return raw[:-1].decode("utf-8")

    def header(self) -> tuple[int, str, int]:
        # The format has no magic number: the version is the first check that the file is a model.bin at all.
        version = self.uint("I", "binary version")
        if version not in _VERSIONS:
            raise ValueError(f"{self.path}: not a CTranslate2 model.bin: binary version {version} not in 4..6")
        return version, self.string("spec name"), self.uint("I", "spec revision")

    def variable(self, index: int):
        """(name, value): a numpy array, a numpy scalar for rank 0, or a str (stored as int8 UTF-8 bytes)."""
        name = self.string(f"name of variable {index}")
        shape = tuple(self.uint("I", f"shape of {name!r}") for _ in range(self.uint("B", f"rank of {name!r}")))
        type_id = self.uint("B", f"dtype of {name!r}")
        raw = self.take(self.uint("I", f"size of {name!r}"), f"data of {name!r}")
        if type_id not in _DTYPES:
            raise ValueError(f"{self.path}: variable {name!r} has unknown dtype id {type_id}")
        dtype, itemsize = _DTYPES[type_id]
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise ValueError(f"{self.path}: variable {name!r}: {len(raw)} bytes do not fit {dtype} {shape}")
        if dtype == "bfloat16":  # widening to float32 is exact
            array = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy().reshape(shape)
        else:
            array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # copy: writable and aligned
        # model_spec.py writes a str attribute as int8 bytes; int8 tensors are quantized "...weight"s only.
        if dtype == "int8" and array.ndim == 1 and not name.endswith("weight"):
            return name, raw.decode("utf-8")
        return name, array[()] if array.ndim == 0 else array


def read_ct2_header(path) -> tuple[int, str, int]:
    """(binary version, spec name, spec revision) of a `model.bin`; a `ValueError` when it is not one."""
    with open(path, "rb") as file:  # the header only: u32 + (u16 + <= 65535 bytes) + u32
        return _Cursor(Path(path), file.read(4 + 2 + 65535 + 4)).header()


def read_ct2_model(path) -> tuple[str, dict, dict[str, str]]:
    """A CTranslate2 `model.bin` -> (spec name, {name: array | scalar | str}, {alias: target name}); arrays keep
    their dtype (int8/int16 weights beside their `<name>_scale`) but bfloat16, widened to float32. `ValueError`
    naming the file on a bad version, a truncated or overlong file, an unknown dtype, an alias to nothing."""
    cursor = _Cursor(Path(path), Path(path).read_bytes())
    spec_name = cursor.header()[1]
    variables = dict(cursor.variable(i) for i in range(cursor.uint("I", "variable count")))
    aliases = {}
    for index in range(cursor.uint("I", "alias count")):
        alias, target = cursor.string(f"alias {index}"), cursor.string(f"target of alias {index}")
        if target not in variables:
            raise ValueError(f"{cursor.path}: alias {alias!r} points to missing variable {target!r}")
        aliases[alias] = target
    if cursor.pos != len(cursor.data):
        raise ValueError(f"{cursor.path}: {len(cursor.data) - cursor.pos} unexpected bytes after the alias table")
    return spec_name, variables, aliases


def _resolve_aliases(variables: dict, aliases: dict[str, str]) -> dict:
    """Gives each alias its target's value. The converter aliases any two equal tensors (the zero biases, the
    tied output projection); as CTranslate2's loader does, an alias also shares the target's quantization scale."""
    scaled = ("", "_scale")  # the variable, then its scale where it has one
    return variables | {a + s: variables[t + s] for a, t in aliases.items() for s in scaled if t + s in variables}


def _dequantize(variables: dict) -> dict:
    """int8/int16 weights and their `_scale` -> float32 `q / scale` (CT2 stores `round(w * scale)`).

    int8 scales are per output row (shape [out]; a conv weight [out, in, k] was scaled as [out, in*k]);
    int16 has one scale for the tensor.
    """
    out = dict(variables)
    for name, value in variables.items():
        if not isinstance(value, np.ndarray) or value.dtype not in (np.int8, np.int16):
            continue
        if name + "_zero" in variables:
            raise ValueError(f"{name}: zero-point (AWQ-style) quantization is not supported; convert with float16")
        if name + "_scale" not in variables:
            raise ValueError(f"{name}: quantized {value.dtype} weight without {name}_scale")
        scale = np.asarray(out.pop(name + "_scale"), dtype=np.float32)
        rows = value.reshape(value.shape[0], -1).astype(np.float32)
        out[name] = (rows / (scale.reshape(-1, 1) if scale.ndim else scale)).reshape(value.shape)
    return out


def _layer_count(variables: dict, side: str) -> int:
    """1 + the highest layer index; a gap below it shows up as a missing variable when mapping."""
    matches = (re.match(rf"{side}/layer_(\d+)/", name) for name in variables)
    return 1 + max((int(m.group(1)) for m in matches if m), default=-1)


def whisper_config_from_ct2(variables: dict, token_ids: dict, ct2_config: dict | None = None) -> WhisperConfig:
    """A transformers `WhisperConfig` whose every size comes from the CT2 tensors (a `KeyError` where one lacks).

    variables: `read_ct2_model`'s, aliases resolved; token_ids: special token -> id (from tokenizer.json);
    ct2_config: the directory's config.json (suppress_ids, suppress_ids_begin), optional.
    """
    v, cfg = variables, ct2_config or {}
    d_model, n_mels, _ = v["encoder/conv1/weight"].shape  # Conv1d weight [d_model, n_mels, 3]
    sizes = dict(d_model=d_model, num_mel_bins=n_mels, vocab_size=v["decoder/embeddings/weight"].shape[0])
    for side in ("encoder", "decoder"):
        sizes[f"{side}_layers"] = _layer_count(v, side)
        sizes[f"{side}_attention_heads"] = int(v[f"{side}/num_heads"])  # a scalar variable of the spec
        sizes[f"{side}_ffn_dim"] = v[f"{side}/layer_0/ffn/linear_0/weight"].shape[0]
    sizes["max_source_positions"] = v["encoder/position_encodings/encodings"].shape[0]  # 1500 for 30 s
    sizes["max_target_positions"] = v["decoder/position_encodings/encodings"].shape[0]
    eot, sot = token_ids["<|endoftext|>"], token_ids["<|startoftranscript|>"]
    ids = dict(pad_token_id=eot, bos_token_id=sot, eos_token_id=eot, decoder_start_token_id=sot)
    ids.update(suppress_tokens=cfg.get("suppress_ids"), begin_suppress_tokens=cfg.get("suppress_ids_begin"))
    # Tied when CT2 wrote the projection as an alias of the embeddings (resolved to the same array), or omitted it.
    projection, embeddings = v.get("decoder/projection/weight"), v["decoder/embeddings/weight"]
    tied = projection is None or projection is embeddings or np.array_equal(projection, embeddings)
    return WhisperConfig(**sizes, **ids, activation_function="gelu", scale_embedding=False, tie_word_embeddings=tied)


class _Mapper:
    """Moves CT2 variables into a transformers state dict: each CT2 variable used once, each parameter filled once
    with its own shape (`expected`: the model's state dict)."""

    def __init__(self, variables: dict, expected: dict):
        self.left, self.expected, self.state = dict(variables), expected, {}

    def take(self, name: str):
        if name not in self.left:
            raise ValueError(f"CT2 variable {name} is missing (or used twice)")
        return self.left.pop(name)

    def put(self, key: str, array: np.ndarray) -> None:
        if key not in self.expected or key in self.state:
            raise ValueError(f"{key} is not a parameter of the model, or would be filled twice")
        if tuple(array.shape) != tuple(self.expected[key].shape):
            raise ValueError(f"{key}: CT2 shape {tuple(array.shape)} != transformers {tuple(self.expected[key].shape)}")
        self.state[key] = array

    def copy(self, src: str, dst: str, names=("weight", "bias")) -> None:
        """A linear/conv (weight, bias) or, with names=("gamma", "beta"), a layer norm."""
        for ct2_name, hf_name in zip(names, ("weight", "bias")):
            self.put(f"{dst}.{hf_name}", self.take(f"{src}/{ct2_name}"))

    def fused(self, src: str, dsts: list[str]) -> None:
        """CT2 stacks the rows of q|k|v (or k|v): [n*d, d] -> n x [d, d]. transformers' k_proj has no bias:
        a key bias adds q.b_k to every logit of a query's row, which softmax cancels, so it can be dropped."""
        fused_w, fused_b = self.take(f"{src}/weight"), self.take(f"{src}/bias")
        if fused_w.shape[0] % len(dsts) or fused_b.shape[0] != fused_w.shape[0]:
            raise ValueError(f"{src}: {fused_w.shape} / {fused_b.shape} do not split into {len(dsts)} projections")
        for dst, weight, bias in zip(dsts, np.split(fused_w, len(dsts)), np.split(fused_b, len(dsts))):
            self.put(f"{dst}.weight", weight)
            if not dst.endswith("k_proj"):
                self.put(f"{dst}.bias", bias)

    def layer(self, src: str, dst: str, cross: bool) -> None:
        self.fused(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}_proj" for p in "qkv"])
        self.copy(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        self.copy(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", ("gamma", "beta"))
        if cross:  # linear_0 = q (from the decoder), linear_1 = k|v (from the encoder), linear_2 = out
            self.copy(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
            self.fused(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"])
            self.copy(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
            self.copy(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", ("gamma", "beta"))
        self.copy(f"{src}/ffn/linear_0", f"{dst}.fc1")
        self.copy(f"{src}/ffn/linear_1", f"{dst}.fc2")
        self.copy(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", ("gamma", "beta"))


def _state_dict_from_ct2(variables: dict, config: WhisperConfig, expected: dict) -> dict[str, np.ndarray]:
    """CT2 names -> transformers names; fails on a CT2 variable left over, one missing or a parameter unfilled."""
    m = _Mapper(variables, expected)
    for side in ("encoder", "decoder"):
        m.take(f"{side}/num_heads")  # already in the config
        m.put(f"model.{side}.embed_positions.weight", m.take(f"{side}/position_encodings/encodings"))
        m.copy(f"{side}/layer_norm", f"model.{side}.layer_norm", ("gamma", "beta"))
        for i in range(getattr(config, f"{side}_layers")):
            m.layer(f"{side}/layer_{i}", f"model.{side}.layers.{i}", cross=side == "decoder")
    m.copy("encoder/conv1", "model.encoder.conv1")
    m.copy("encoder/conv2", "model.encoder.conv2")
    m.put("model.decoder.embed_tokens.weight", m.take("decoder/embeddings/weight"))
    if not config.tie_word_embeddings:
        m.put("proj_out.weight", m.take("decoder/projection/weight"))
    else:  # the very tensor of embed_tokens, which transformers shares with proj_out
        m.left.pop("decoder/projection/weight", None)
        m.state["proj_out.weight"] = m.state["model.decoder.embed_tokens.weight"]
    for flag, want in _EXPECTED_FLAGS.items():
        if (value := m.left.pop(f"decoder/{flag}", want)) != want:
            raise ValueError(f"decoder/{flag} = {value}, but transformers' Whisper needs {want}")
    for name in _METADATA:
        m.left.pop(name, None)
    if m.left:
        raise ValueError(f"CT2 variables with no place in WhisperForConditionalGeneration: {sorted(m.left)}")
    if unfilled := sorted(set(expected) - set(m.state)):
        raise ValueError(f"parameters the CT2 model does not fill: {unfilled}")
    return m.state


def _load_json(path: Path) -> dict | list:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _special_token_ids(directory: Path) -> dict[str, int]:
    """Added (special) tokens of tokenizer.json, else of the CT2 vocabulary file (one token per id, in order)."""
    tokenizer = _load_json(directory / "tokenizer.json")
    if tokenizer.get("added_tokens"):
        return {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    text, json_list = directory / "vocabulary.txt", directory / "vocabulary.json"  # older / newer converters
    tokens = text.read_text(encoding="utf-8").split("\n") if text.is_file() else _load_json(json_list) or []
    return {token: i for i, token in enumerate(tokens) if token.startswith("<|")}


def _generation_config(config: WhisperConfig, token_ids: dict[str, int]) -> GenerationConfig:
    """Greedy English transcription without timestamps, as CTranslate2 decodes by default: prompt
    <|startoftranscript|> [<|en|> <|transcribe|>] <|notimestamps|>, suppress_ids always, blank/eot at the start."""
    keys = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "suppress_tokens")
    gen = GenerationConfig(**{k: getattr(config, k) for k in keys + ("begin_suppress_tokens",)})
    gen.no_timestamps_token_id = token_ids["<|notimestamps|>"]
    gen.max_length, gen.return_timestamps = config.max_target_positions, False
    gen.is_multilingual = config.vocab_size >= 51865  # openai/whisper's rule: English-only models have 51864
    if gen.is_multilingual:
        langs = {t: i for t, i in token_ids.items() if re.fullmatch(r"<\|[a-z]{2,3}\|>", t)}
        gen.lang_to_id, gen.language, gen.task = langs, "en", "transcribe"
        gen.task_to_id = {task: token_ids[f"<|{task}|>"] for task in ("transcribe", "translate")}
    return gen


def load_ct2_whisper(directory, dtype: torch.dtype = torch.float32) -> WhisperForConditionalGeneration:
    """A CTranslate2 Whisper directory -> transformers' Whisper in eval mode, generation set up for English."""
    directory = Path(directory)
    path = directory / "model.bin"
    _, spec_name, revision = read_ct2_header(path)
    if spec_name != "WhisperSpec" or revision > _WHISPER_REVISION:
        raise ValueError(f"{path}: {spec_name} revision {revision} is not a WhisperSpec up to {_WHISPER_REVISION}")
    _, variables, aliases = read_ct2_model(path)
    variables, token_ids = _dequantize(_resolve_aliases(variables, aliases)), _special_token_ids(directory)
    try:
        config = whisper_config_from_ct2(variables, token_ids, _load_json(directory / "config.json"))
        generation_config = _generation_config(config, token_ids)
    except KeyError as missing:  # a core variable or a special token
        raise ValueError(f"{directory}: {missing} not found; not a CTranslate2 Whisper directory") from None
    model = WhisperForConditionalGeneration(config)
    state = _state_dict_from_ct2(variables, config, model.state_dict())
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)
    model.generation_config = generation_config
    return model.to(dtype).eval()


def load_ct2_tokenizer(directory) -> WhisperTokenizerFast:
    """The directory's tokenizer.json as a transformers Whisper tokenizer, offline (no hub look-up)."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing; the CT2 directory needs its tokenizer.json")
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(path))
    if tokenizer.pad_token is None:  # Whisper pads with <|endoftext|>, as transformers' own checkpoints do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
