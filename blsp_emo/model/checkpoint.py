"""Finding and loading saved models: local folders, the bundled demo models, or hub ids.

A model folder holds `config.json` + `model.safetensors` (our layout, written by `save_pretrained`)
and the tokenizer files. Loading refuses missing or unexpected tensors instead of dropping them.
A damaged weight file is named before transformers reads it (`blsp_emo.model.weights`).
A folder in the released BLSP-Emo layout (pickled Qwen-v1 shards, `qwen.tiktoken`) is converted in
memory on every load; `convert_released` writes it once in our layout.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

from blsp_emo.model import on_bases
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.model.weights import BUNDLED_MODELS as BUNDLED_MODELS  # where callers have found it
from blsp_emo.model.weights import check_weights
from blsp_emo.released import convert as released


class ModelNotFoundError(FileNotFoundError):
    """The model folder or hub id cannot be found or fetched; the message says how to get it."""


def resolve(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; a hub id (`owner/name`) through the Hugging Face cache or download."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model folder {name} does not exist; pass a folder with config.json or a hub id")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision))
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached ({type(e).__name__})"
        raise ModelNotFoundError(
            f"cannot fetch '{name}' from the Hugging Face hub: {why}. On a machine with the hub run "
            f"`hf download {name}{f' --revision {revision}' if revision else ''} --local-dir DIR`, then pass "
            "--model DIR"
        ) from e


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(names)}")
    return names[dtype]


def load_pretrained(cls, path: Path, device: str | None = None, dtype=None, **kwargs):
    """`cls.from_pretrained`, refusing a checkpoint whose tensors do not match the model exactly."""
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json; is it a model folder?")
    check_weights(path)  # a damaged file is named here; transformers' error names none
    model, info = cls.from_pretrained(str(path), dtype=_dtype(dtype), output_loading_info=True, **kwargs)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"{path}: checkpoint does not match {cls.__name__}: {problems}")
    if "device_map" not in kwargs:
        model = place(model, device)
    return model.eval()


@lru_cache(maxsize=8)
def load_model(
    name_or_path: str, device: str | None = None, dtype: str | None = None, revision: str | None = None
) -> tuple[BlspEmoModel, ChatTokenizer]:
    """A BLSP-Emo model and its tokenizer, loaded once per process and shared read-only.

    Args:
        name_or_path: a model folder (ours or the released layout) or a hub id such as cwang621/blsp-emo.
        device: a torch device, or "auto" to offload LLM blocks that do not fit the GPU (see `place`).
        dtype: "float32", "bfloat16" or "float16"; None keeps the stored dtype.
        revision: a hub branch, tag or commit to pin (hub ids only).
    """
    path = resolve(name_or_path, revision)
    if released.is_released_layout(path):
        model, tokenizer = released.load_released(path, _dtype(dtype))
        return place(model, device).eval(), tokenizer
    if on_bases.is_on_bases(path):  # trained parts only; the bases come from their sources
        check_weights(path)
        model, tokenizer = on_bases.load_on_bases(path)
        # The bases are shared by every model on them, so a dtype or device applies to all of them.
        model = model.to(_dtype(dtype)) if dtype is not None else model
        return place(model, device).eval(), tokenizer
    model = load_pretrained(BlspEmoModel, path, device, dtype)
    return model, ChatTokenizer.from_pretrained(path)


def convert_released(src: str | Path, dst: str | Path, dtype: str | None = None, revision: str | None = None) -> Path:
    """Convert a released-layout checkpoint (folder or hub id) once into our layout at `dst`."""
    path = resolve(src, revision)
    if not released.is_released_layout(path):
        raise ValueError(
            f"{path} is not in the released layout (no {released.INDEX_FILE} and no qwen_config in config.json)"
        )
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"{dst} exists and is not empty; choose a new folder for the converted model")
    return released.convert(path, dst, _dtype(dtype))


def place(model: torch.nn.Module, device: str | None) -> torch.nn.Module:
    """Move `model` to `device`; "auto" fills the first GPU and keeps the LLM blocks that do not fit
    in CPU RAM, streamed to the GPU block by block by accelerate (slow, but a 7B model then runs on
    a GPU with less memory than its weights)."""
    if device is None:
        return model
    if device != "auto":
        return model.to(device)
    if not torch.cuda.is_available():
        return model
    from accelerate import dispatch_model

    free, _ = torch.cuda.mem_get_info(0)
    return dispatch_model(model, offload_device_map(model, int(free * 0.9)))


def offload_device_map(model: torch.nn.Module, gpu_bytes: int) -> dict[str, int | str]:
    """GPU 0 for everything but the LLM blocks that do not fit in `gpu_bytes`, which go to "cpu".

    Blocks are the LLM's embeddings, each decoder layer, its final norm and its head, filled in order.
    The encoder, adapter, head and LoRA never leave GPU 0: our forward puts inputs and LoRA masks on
    `model.device`, and a LoRA pair must sit where its linear runs, which is GPU 0 for an offloaded block.
    """
    from accelerate.utils import compute_module_sizes

    if getattr(model, "llm", None) is None:  # a model without an LLM (ASR, SER) is small
        return {"": 0}
    sizes = compute_module_sizes(model)
    blocks = [f"llm.model.{name}" for name, _ in model.llm.model.named_children() if name != "layers"]
    blocks[1:1] = [f"llm.model.layers.{i}" for i in range(len(model.llm.model.layers))]  # after the embeddings
    blocks.append("llm.lm_head")
    # Keep room for the largest block: an offloaded block runs on the GPU while it is needed.
    budget = gpu_bytes - (sizes[""] - sizes["llm"]) - max(sizes[b] for b in blocks)
    device_map: dict[str, int | str] = {name: 0 for name, _ in model.named_children() if name != "llm"}
    for block in blocks:
        fits = sizes[block] <= budget or next(model.get_submodule(block).parameters(), None) is None
        device_map[block] = 0 if fits else "cpu"
        budget -= sizes[block] if fits else 0
    return device_map


def save_model(model: BlspEmoModel, tokenizer: ChatTokenizer, path: str | Path) -> None:
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(path)
