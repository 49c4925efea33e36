"""Checking a model folder's weight files before loading them, so that a damaged one is named.

transformers reports a truncated or garbled `model.safetensors` as "Error while deserializing
header: invalid header length", with a traceback and without the file's name. Every safetensors
file a folder names is opened here first (safetensors reads only the header, and checks that the
tensors it lists cover the file exactly); one that fails stops loading with a line naming it and
the fix. No torch: the app's own process, which never loads a model, can import this.
"""

from __future__ import annotations

import json
from pathlib import Path

INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
# Demo-scale models built by `python -m train demo`: one folder per component.
BUNDLED_MODELS = Path(__file__).resolve().parents[2] / "assets" / "models"


class CorruptWeightsError(ValueError):
    """A weight file is damaged (truncated, overwritten, not safetensors); the message names it and the fix."""


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files `folder` loads from: those its index names (which may lie outside it,
    as the bundle's shared files do), else its `model.safetensors`; none for another layout."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            names = json.loads(index.read_text())["weight_map"].values()
        except (ValueError, KeyError, AttributeError) as e:
            raise CorruptWeightsError(_damaged(index, f"not a weight index: {e}")) from e
        return [folder / name for name in dict.fromkeys(names)]
    single = folder / WEIGHTS_FILE
    return [single] if single.exists() else []


def check_weights(folder: Path) -> None:
    """Raise `CorruptWeightsError` naming the first weight file of `folder` that cannot be read."""
    from safetensors import SafetensorError, safe_open

    for path in weight_files(folder):
        if not path.is_file():
            raise CorruptWeightsError(_damaged(path, "missing, though the folder's index names it"))
        try:
            with safe_open(str(path), framework="numpy"):  # the header only; the tensors stay on disk
                pass
        except (SafetensorError, OSError) as e:
            raise CorruptWeightsError(_damaged(path, str(e))) from e


def _damaged(path: Path, why: str) -> str:
    bundled = BUNDLED_MODELS in path.resolve().parents
    fix = (
        "rebuild the demo models with `python -m train demo`"
        if bundled
        else "copy or download the model folder again (or re-run the build that wrote it)"
    )
    return f"{path}: the weight file is damaged ({why}); {fix}"
