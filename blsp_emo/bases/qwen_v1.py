"""A Qwen v1 checkpoint (Qwen-7B-Chat: the released BLSP-Emo's LLM) read as `Qwen2ForCausalLM`.

The tensor mapping and the config translation are the released checkpoint's (docs/paper.md §8.2),
reused from `blsp_emo.released.convert`: the released model stores the same Qwen v1 tensors under
`qwen_model.model.`, so a plain Qwen-7B-Chat folder maps through the same plan with that prefix.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

from blsp_emo.released import convert as released

_PREFIX = "qwen_model.model."  # where the released checkpoint keeps the Qwen v1 tensors
_LLM = "llm."  # where our composite keeps the LLM


def qwen_v1_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files, or of its pickled shards (weights only)."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return {name: t for f in files for name, t in load_file(str(f)).items()}
    return {name: t for shard in released.weight_files(folder) for name, t in released.read_shard(shard).items()}


def load_qwen_v1_llm(folder: str | Path, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """The Qwen v1 model in `folder` (config.json with `model_type: qwen`) as a Qwen2 model."""
    from accelerate import init_empty_weights

    folder = Path(folder)
    config = released.qwen2_config(json.loads((folder / "config.json").read_text()))
    with init_empty_weights(include_buffers=False):  # parameters on meta; RoPE's buffers are real
        model = Qwen2ForCausalLM(config)
    expected = {_LLM + name: value.shape for name, value in model.state_dict().items()}
    state = {_PREFIX + name: value for name, value in qwen_v1_tensors(folder).items()}
    converted = released.convert_tensors(state, expected, dtype)
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise released.ReleasedCheckpointError(f"{folder}: no tensor for {missing[:5]} ({len(missing)} missing)")
    model.load_state_dict({name.removeprefix(_LLM): value for name, value in converted.items()}, assign=True)
    return model.eval()
