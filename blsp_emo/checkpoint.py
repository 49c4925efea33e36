"""Finding and loading saved models: local folders, the bundled demo models, or hub ids.

A model folder holds `config.json` + `model.safetensors` (our layout, written by `save_pretrained`)
and the tokenizer files. Loading refuses missing or unexpected tensors instead of dropping them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

from .model import BlspEmoModel
from .tokenizer import ChatTokenizer

# Demo-scale models built by `python -m train demo`: one folder per component.
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"


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
            f"`hf download {name} --local-dir DIR`, then pass --model DIR"
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
    model, info = cls.from_pretrained(str(path), dtype=_dtype(dtype), output_loading_info=True, **kwargs)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"{path}: checkpoint does not match {cls.__name__}: {problems}")
    if device is not None and "device_map" not in kwargs:
        model = model.to(device)
    return model.eval()


@lru_cache(maxsize=8)
def load_model(name_or_path: str, device: str | None = None, dtype: str | None = None) -> tuple[BlspEmoModel, ChatTokenizer]:
    """A BLSP-Emo model and its tokenizer, loaded once per process and shared read-only."""
    path = resolve(name_or_path)
    model = load_pretrained(BlspEmoModel, path, device, dtype)
    return model, ChatTokenizer.from_pretrained(path)


def save_model(model: BlspEmoModel, tokenizer: ChatTokenizer, path: str | Path) -> None:
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(path)
