"""The released BLSP-Emo checkpoint (`cwang621/blsp-emo`, docs/paper.md §7) in our classes, without its code.

The release is a `Blsp2Model` folder: `config.json` with `whisper_config`, `qwen_config` (Qwen v1
keys) and the adapter/LoRA keys; pickled shards `pytorch_model-*.bin` + `pytorch_model.bin.index.json`
(or one `pytorch_model.bin`); and `qwen.tiktoken`. Mapping (§8.2): Whisper and the adapter copy by
name; Qwen v1 becomes Qwen2 (c_attn splits along dim 0 into q/k/v with their biases, attn.c_proj ->
o_proj, w2 -> gate_proj, w1 -> up_proj, mlp.c_proj -> down_proj); each LoRA pair follows its linear
(c_attn's B splits by rows, its A is shared by q/k/v); `hidden2emotion` is the emotion head. Every
tensor is placed or refused: an unknown name, a wrong shape or a missing tensor raises
`ReleasedCheckpointError` naming it. Pickles are read with `weights_only=True` only, one shard at a
time and memory-mapped, into a model built without allocating weights, so the weights are never
held twice (with the stored dtype, parameters are the mapped file pages themselves).

Qwen v1 also has LogN attention scaling and dynamic-NTK RoPE, which Qwen2 lacks. We rely on both
being inactive up to `seq_length` positions (8192 in the release, §8.3), where plain Qwen2 with
rope_theta = rotary_emb_base gives the same logits; the released code cannot run past 8192
positions anyway (its causal-mask buffer has that size). The converted `max_position_embeddings`
is therefore `seq_length`, with a warning if a config would let v1 go further.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config

from blsp_emo.emotion import EMOTIONS
from blsp_emo.model.config import QWEN2_LORA_TARGETS, BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.released.qwen_tokenizer import VOCAB_FILE, load_qwen_tokenizer

logger = logging.getLogger(__name__)

INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"

# Released tensor prefixes -> ours. The Qwen part sits under `qwen_model.model.` (the extra
# `.model.` is the released PLoRA wrapper's attribute).
_COPIED_PREFIXES = {"whisper_model.": "encoder.", "adapter.": "adapter."}
_QWEN_PREFIX = "qwen_model.model."
_QWEN_TOP = {
    "transformer.wte.weight": "llm.model.embed_tokens.weight",
    "transformer.ln_f.weight": "llm.model.norm.weight",
    "lm_head.weight": "llm.lm_head.weight",
}
# Qwen v1 module in a block -> Qwen2 module(s). c_attn fans out into q, k, v (thirds of dim 0).
_BLOCK_MODULES = {
    "ln_1": ("input_layernorm",),
    "ln_2": ("post_attention_layernorm",),
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.c_proj": ("self_attn.o_proj",),
    "mlp.w1": ("mlp.up_proj",),  # the linear branch
    "mlp.w2": ("mlp.gate_proj",),  # the branch under SiLU: c_proj(w1(x) * silu(w2(x)))
    "mlp.c_proj": ("mlp.down_proj",),
}
_BLOCK_TENSOR = re.compile(
    r"transformer\.h\.(?P<layer>\d+)\.(?P<module>" + "|".join(re.escape(m) for m in _BLOCK_MODULES) + r")\."
    r"(?P<kind>weight|bias|lora_A\.default\.weight|lora_B\.default\.weight)"
)
# Buffers Qwen v1 derives from its config (§8.1); never learned, so nothing to carry over.
_DERIVED_BUFFER = re.compile(r"(attn\.masked_bias|attn\.logn_tensor|registered_causal_mask|rotary_emb\.inv_freq)$")

# Released LoRA targets, matched by suffix as the release does: "c_proj" hits attention and MLP.
_LORA_TARGETS = {
    "c_attn": ("q_proj", "k_proj", "v_proj"),
    "c_proj": ("o_proj", "down_proj"),
    "w1": ("up_proj",),
    "w2": ("gate_proj",),
}
# Qwen v1 options whose other values change the computation in ways Qwen2 cannot express.
_QWEN_FIXED = {"rotary_pct": 1.0, "no_bias": True, "tie_word_embeddings": False, "scale_attn_weights": True}
_QWEN_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "kv_channels",
    "intermediate_size",
    "layer_norm_epsilon",
    "rotary_emb_base",
)


class ReleasedCheckpointError(ValueError):
    """A released-layout folder holds something we cannot map faithfully; the message names it."""


@dataclass(frozen=True)
class Placement:
    """Where (part of) a released tensor goes: our state-dict key, and for c_attn which third."""

    target: str
    part: int | None = None  # 0/1/2 = q/k/v third of dim 0; None = the whole tensor


# --- detection and config ------------------------------------------------------------------------


def is_released_layout(path: str | Path) -> bool:
    """True for a folder in the released layout (index of pickled shards, or a Qwen v1 config)."""
    path = Path(path)
    if (path / INDEX_FILE).is_file():
        return True
    config = path / "config.json"
    return config.is_file() and "qwen_config" in json.loads(config.read_text())


def released_config(raw: dict) -> BlspEmoConfig:
    """The released `config.json` (a dict) as our BlspEmoConfig."""
    _require(
        raw,
        (
            "whisper_config",
            "qwen_config",
            "adapter_type",
            "conv_kernel_sizes",
            "adapter_inner_dim",
            "lora_scope",
            "num_emotions",
        ),
        "config.json",
    )
    if raw["adapter_type"] != "subsampler":
        raise ReleasedCheckpointError(
            f"adapter_type {raw['adapter_type']!r} is not supported: only the released 'subsampler' adapter "
            "maps onto ours (the 'cformer' adapter's CIF layers are not implemented)"
        )
    if raw.get("adapter_hidden_layers", 0) != 0:
        raise ReleasedCheckpointError(
            f"adapter_hidden_layers {raw['adapter_hidden_layers']} is not supported; our adapter has none "
            "(the release: 0)"
        )
    if raw["lora_scope"] != "audio":
        raise ReleasedCheckpointError(
            f"lora_scope {raw['lora_scope']!r} is not supported: our LoRA applies at speech positions only "
            "(the release: 'audio')"
        )
    if int(raw["num_emotions"]) != len(EMOTIONS):
        raise ReleasedCheckpointError(
            f"num_emotions {raw['num_emotions']} does not match the released labels {EMOTIONS}"
        )
    return BlspEmoConfig(
        encoder_config=dict(raw["whisper_config"]),
        llm_config=qwen2_config(raw["qwen_config"]),
        conv_kernel_sizes=_kernel_sizes(raw["conv_kernel_sizes"]),
        conv_stride=2,  # fixed in the released adapter (§1.1)
        adapter_inner_dim=int(raw["adapter_inner_dim"]),
        emotions=EMOTIONS,
        kd_temperature=float(raw.get("kd_temperature", 2.0)),
        **_lora_options(raw.get("lora_config")),
    )


def qwen2_config(qwen: dict) -> Qwen2Config:
    """A Qwen v1 `qwen_config` as the Qwen2 config that computes the same (§8.2)."""
    _require(qwen, _QWEN_REQUIRED, "qwen_config")
    for key, value in _QWEN_FIXED.items():
        if qwen.get(key, value) != value:
            raise ReleasedCheckpointError(f"qwen_config {key}={qwen[key]!r} is not supported; Qwen2 needs {value!r}")
    hidden, heads = int(qwen["hidden_size"]), int(qwen["num_attention_heads"])
    if int(qwen["kv_channels"]) * heads != hidden:
        raise ReleasedCheckpointError(
            f"qwen_config kv_channels {qwen['kv_channels']} x {heads} heads != hidden_size {hidden}"
        )
    return Qwen2Config(
        vocab_size=int(qwen["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(qwen["intermediate_size"]) // 2,  # v1 counts both MLP branches (22016 -> 11008)
        num_hidden_layers=int(qwen["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        rms_norm_eps=float(qwen["layer_norm_epsilon"]),
        rope_theta=float(qwen["rotary_emb_base"]),
        max_position_embeddings=_exact_positions(qwen),
        tie_word_embeddings=False,
        use_sliding_window=False,
        attention_dropout=0.0,
    )


def _exact_positions(qwen: dict) -> int:
    """Positions up to which Qwen2 reproduces v1: LogN and dynamic NTK start past `seq_length`."""
    max_positions = int(qwen.get("max_position_embeddings", 8192))
    seq_length = int(qwen.get("seq_length", max_positions))
    if seq_length < max_positions and (qwen.get("use_logn_attn", True) or qwen.get("use_dynamic_ntk", True)):
        logger.warning(
            "qwen_config: LogN/dynamic-NTK would act on positions %d..%d, which Qwen2 does not reproduce; "
            "max_position_embeddings is set to %d",
            seq_length + 1,
            max_positions,
            seq_length,
        )
        return seq_length
    return max_positions


def _lora_options(lora: dict | None) -> dict:
    if not lora:
        return {"lora_rank": 0}
    _require(lora, ("r", "lora_alpha", "target_modules"), "lora_config")
    for key, value in (
        ("bias", "none"),
        ("fan_in_fan_out", False),
        ("use_rslora", False),
        ("use_dora", False),
        ("layers_to_transform", None),
    ):
        if lora.get(key, value) != value:
            raise ReleasedCheckpointError(f"lora_config {key}={lora[key]!r} is not supported (the release: {value!r})")
    unknown = sorted(set(lora["target_modules"]) - set(_LORA_TARGETS))
    if unknown:
        raise ReleasedCheckpointError(f"lora_config target_modules {unknown} unknown; known: {sorted(_LORA_TARGETS)}")
    wanted = {t for name in lora["target_modules"] for t in _LORA_TARGETS[name]}
    return {
        "lora_rank": int(lora["r"]),
        "lora_alpha": float(lora["lora_alpha"]),
        "lora_dropout": float(lora.get("lora_dropout", 0.0)),
        "lora_target_modules": tuple(t for t in QWEN2_LORA_TARGETS if t in wanted),
    }


def _kernel_sizes(value) -> tuple[int, ...]:
    try:
        sizes = value.split(",") if isinstance(value, str) else value
        return tuple(int(k) for k in sizes)
    except (TypeError, ValueError) as e:
        raise ReleasedCheckpointError(f"conv_kernel_sizes {value!r} is not a list like '5,5,5'") from e


def _require(d: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ReleasedCheckpointError(f"{where} lacks {missing}; is this the released BLSP-Emo layout?")


# --- tensor names ---------------------------------------------------------------------------------


def plan(name: str) -> tuple[Placement, ...]:
    """Where released tensor `name` goes in our state dict; () for a derived buffer (§8.1)."""
    if _DERIVED_BUFFER.search(name):
        return ()
    for prefix, ours in _COPIED_PREFIXES.items():
        if name.startswith(prefix):
            return (Placement(ours + name[len(prefix) :]),)
    if name == "hidden2emotion.weight":
        return (Placement("emotion_head.weight"),)
    if name.startswith(_QWEN_PREFIX):
        return _plan_qwen(name, name[len(_QWEN_PREFIX) :])
    raise ReleasedCheckpointError(f"unknown tensor {name!r} in the checkpoint; refusing to drop it")


def _plan_qwen(name: str, rest: str) -> tuple[Placement, ...]:
    if rest in _QWEN_TOP:
        return (Placement(_QWEN_TOP[rest]),)
    m = _BLOCK_TENSOR.fullmatch(rest)
    if m is None:
        raise ReleasedCheckpointError(f"unknown Qwen v1 tensor {name!r} in the checkpoint; refusing to drop it")
    modules, kind = _BLOCK_MODULES[m["module"]], m["kind"]
    split = len(modules) > 1 and kind != "lora_A.default.weight"  # LoRA A is shared by q/k/v
    if kind.startswith("lora_"):
        prefix, suffix = f"lora.layers.model.layers.{m['layer']}.", f".{kind[:6]}.weight"
    else:
        prefix, suffix = f"llm.model.layers.{m['layer']}.", f".{kind}"
    return tuple(Placement(prefix + module + suffix, i if split else None) for i, module in enumerate(modules))


def released_name(target: str) -> str:
    """The released name of our tensor `target`, the inverse of `plan` (for messages)."""
    for prefix, ours in _COPIED_PREFIXES.items():
        if target.startswith(ours):
            return prefix + target[len(ours) :]
    if target == "emotion_head.weight":
        return "hidden2emotion.weight"
    top = {ours: v1 for v1, ours in _QWEN_TOP.items()}
    if target in top:
        return _QWEN_PREFIX + top[target]
    m = re.fullmatch(r"(llm|lora\.layers)\.model\.layers\.(\d+)\.(.+?)\.(weight|bias|lora_[AB]\.weight)", target)
    v1 = next((k for k, mods in _BLOCK_MODULES.items() if m and m[3] in mods), None)
    if v1 is None:
        return target
    kind = m[4].replace(".weight", ".default.weight") if m[1] == "lora.layers" else m[4]
    return f"{_QWEN_PREFIX}transformer.h.{m[2]}.{v1}.{kind}"


# --- loading --------------------------------------------------------------------------------------


def weight_files(root: Path) -> dict[Path, frozenset[str] | None]:
    """Shard path -> the tensor names the index puts there (None for a single unindexed file)."""
    index = root / INDEX_FILE
    if not index.is_file():
        if (root / SINGLE_FILE).is_file():
            return {root / SINGLE_FILE: None}
        raise ReleasedCheckpointError(f"{root} has neither {INDEX_FILE} nor {SINGLE_FILE}")
    by_shard: dict[str, set[str]] = defaultdict(set)
    for name, shard in json.loads(index.read_text())["weight_map"].items():
        by_shard[shard].add(name)
    for shard, names in by_shard.items():
        if not (root / shard).is_file():
            raise ReleasedCheckpointError(
                f"{INDEX_FILE} puts {min(names)} (and {len(names) - 1} more) in {shard}, which is missing "
                f"from {root}; download the checkpoint again"
            )
    return {root / shard: frozenset(names) for shard, names in sorted(by_shard.items())}


def load_released(path: str | Path, dtype: torch.dtype | None = None) -> tuple[BlspEmoModel, ChatTokenizer]:
    """Our model and tokenizer from a released-layout folder, in `dtype` (default: as stored)."""
    root = Path(path)
    config = released_config(json.loads((root / "config.json").read_text()))
    if not (root / VOCAB_FILE).is_file():
        raise ReleasedCheckpointError(f"{root} lacks {VOCAB_FILE}, the released tokenizer; download it again")
    tokenizer = load_qwen_tokenizer(root / VOCAB_FILE)
    if len(tokenizer.hf) > config.llm_config.vocab_size:
        raise ReleasedCheckpointError(
            f"{VOCAB_FILE} has {len(tokenizer.hf)} tokens but qwen_config vocab_size is {config.llm_config.vocab_size}"
        )
    files = weight_files(root)
    model = _empty_model(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    indexed = [name for names in files.values() if names is not None for name in names]
    if indexed:  # fail before reading gigabytes when the index already shows a problem
        _check_coverage(indexed, expected)
    filled: set[str] = set()
    for shard, names in files.items():
        state = read_shard(shard)
        dtype = dtype or _stored_dtype(state)  # one dtype for the whole model
        if names is not None and names - state.keys():
            raise ReleasedCheckpointError(
                f"{shard.name} lacks {sorted(names - state.keys())[:3]}, which {INDEX_FILE} says it holds"
            )
        converted = convert_tensors(state, expected, dtype, filled)
        del state
        model.load_state_dict(converted, strict=False, assign=True)
        filled |= converted.keys()
    _check_coverage_done(filled, expected)
    return model.eval(), tokenizer


def convert_tensors(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size], dtype: torch.dtype, filled: set[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """Released tensors -> ours (names per `plan`), checking each target exists, is new and fits."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        places = plan(name)
        for p in places:
            value = tensor if p.part is None else tensor.tensor_split(3, dim=0)[p.part]
            _check_target(name, p.target, value, expected, p.target in filled or p.target in out)
            # q/k/v thirds and the shared LoRA A get storage of their own: saving refuses shared tensors.
            out[p.target] = value.to(dtype=dtype if value.is_floating_point() else value.dtype, copy=len(places) > 1)
    return out


def _check_known(name: str, target: str, expected: dict) -> None:
    if target not in expected:
        raise ReleasedCheckpointError(f"tensor {name!r} maps to {target!r}, which BlspEmoModel does not have")


def _check_target(name: str, target: str, value: torch.Tensor, expected: dict, taken: bool) -> None:
    _check_known(name, target, expected)
    if taken:
        raise ReleasedCheckpointError(f"tensor {name!r} maps to {target!r}, which another tensor already filled")
    if value.shape != expected[target]:
        raise ReleasedCheckpointError(
            f"tensor {name!r} has shape {tuple(value.shape)} for {target!r}, which needs {tuple(expected[target])} "
            "by config.json"
        )


def _check_coverage(names, expected: dict) -> None:
    planned = set()
    for name in names:
        for p in plan(name):
            _check_known(name, p.target, expected)
            planned.add(p.target)
    _check_coverage_done(planned, expected)


def _check_coverage_done(filled: set[str], expected: dict) -> None:
    missing = sorted(expected.keys() - filled)
    if missing:
        named = ", ".join(f"{released_name(t)} (ours: {t})" for t in missing[:3])
        raise ReleasedCheckpointError(f"the checkpoint lacks {len(missing)} tensor(s) config.json calls for: {named}")


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: a pickle can run code; this allows tensors and plain containers only. mmap keeps
    # the shard on disk, so a 10 GB shard does not need 10 GB of RAM on top of the model.
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReleasedCheckpointError(f"{path} is not a state dict of tensors")
    return state


def _stored_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    return next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)


def _empty_model(config: BlspEmoConfig) -> BlspEmoModel:
    """The model with parameters on the meta device (no memory); buffers such as RoPE's are real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return BlspEmoModel(config)


def convert(src: str | Path, dst: str | Path, dtype: torch.dtype | None = None, max_shard_size: str = "5GB") -> Path:
    """Write a released-layout folder once in our layout (safetensors + tokenizer.json)."""
    model, tokenizer = load_released(src, dtype)
    dst = Path(dst)
    model.save_pretrained(str(dst), max_shard_size=max_shard_size)
    tokenizer.save_pretrained(dst)
    return dst
