"""The bundle the app loads by default: one folder per component, each tensor stored once.

Stage 1 trains only the adapter, so `blsp` holds the ASR encoder and the LLM unchanged, and stage 2
keeps that LLM too (its LoRA is separate). Copying each component whole would store them twice.
Instead a tensor that several components hold (same name, same values) goes to one file under
`shared/`, and each such component lists its tensors in a standard sharded-checkpoint index
(`model.safetensors.index.json`), which `from_pretrained` follows like any sharded checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "word_lm.json",
)
OWN_FILE, INDEX_FILE, SHARED_DIR = "own.safetensors", "model.safetensors.index.json", "shared"


def bundle(parts: dict[str, Path], out: Path) -> dict[str, int]:
    """Copy each component's model files (not checkpoints or logs) to out/<name>/, then store the
    tensors they share once. Returns the bytes of tensors stored before and after."""
    shutil.rmtree(out / SHARED_DIR, ignore_errors=True)
    for name, src in parts.items():
        dst = out / name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in MODEL_FILES + ("metrics.json",):
            if (src / f).exists():
                shutil.copy2(src / f, dst / f)
    return store_shared_once(out, list(parts))


def store_shared_once(out: Path, names: list[str]) -> dict[str, int]:
    """Move tensors held by more than one of `names` (same name and values) to out/shared/."""
    tensors = {name: load_file(out / name / "model.safetensors") for name in names}
    holders: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, state in tensors.items():
        for key, value in state.items():
            holders[key, _digest(value)].append(name)
    before = sum(_nbytes(state) for state in tensors.values())
    shared_files: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for name, state in tensors.items():
        files = {key: _file_for(holders[key, _digest(value)]) for key, value in state.items()}
        if all(f == OWN_FILE for f in files.values()):
            continue  # nothing shared: keep the plain single file
        own = {key: value for key, value in state.items() if files[key] == OWN_FILE}
        for key, f in files.items():
            if f != OWN_FILE:
                shared_files[f][key] = state[key]
        save_file(own, out / name / OWN_FILE, metadata={"format": "pt"})
        index = {"metadata": {"total_size": _nbytes(state)}, "weight_map": dict(sorted(files.items()))}
        (out / name / INDEX_FILE).write_text(json.dumps(index, indent=1))
        (out / name / "model.safetensors").unlink()
    (out / SHARED_DIR).mkdir(exist_ok=True)
    for f, state in shared_files.items():
        save_file(state, out / SHARED_DIR / Path(f).name, metadata={"format": "pt"})
    after = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    return {"tensor_bytes_copied": before, "safetensors_bytes_stored": after}


def _file_for(holders: list[str]) -> str:
    return OWN_FILE if len(holders) == 1 else f"../{SHARED_DIR}/{'+'.join(sorted(holders))}.safetensors"


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous()
    return (
        f"{data.dtype}{tuple(data.shape)}"
        + hashlib.sha256(data.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    )


def _nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())
