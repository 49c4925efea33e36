"""What the latency bench reads around a reply: the machine it ran on, the peak memory of a block
of work, and the time spent inside a system's Whisper encoders."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from blsp_emo.systems import SpokenDialogueSystem


def machine_info(device: str | None = None) -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device or "cpu",
    }
    if torch.cuda.is_available() and (device or "").startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


class PeakMemory:
    """Peak resident memory of this process (and GPU memory) over a block of work.

    Linux keeps the peak RSS in VmHWM; writing 5 to /proc/self/clear_refs resets it to the current
    RSS, so each block gets its own peak instead of the process's lifetime maximum.
    """

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # not Linux or not allowed: the peak is the process's so far
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        status = {k: v for k, _, v in (line.partition(":") for line in _read_lines("/proc/self/status"))}
        kb = status.get("VmHWM", "").split()
        self.rss_mb = int(kb[0]) / 1024 if kb else float("nan")
        self.gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        return False


class EncoderTimer:
    """Wall time spent inside every Whisper encoder a system holds, from its first conv to its final norm.

    Hooks on `conv1` and `layer_norm` catch both the full-window forward and the clip-length path
    (`encoder.py`), which runs the same submodules without `WhisperEncoder.forward`.
    """

    def __init__(self, system: SpokenDialogueSystem):
        self.seconds = 0.0
        self._start = None
        self._handles = []
        for encoder in _whisper_encoders(system):
            self._handles.append(encoder.conv1.register_forward_pre_hook(self._begin))
            self._handles.append(encoder.layer_norm.register_forward_hook(self._end))

    def _sync(self, module: nn.Module) -> None:
        if next(module.parameters()).is_cuda:
            torch.cuda.synchronize()

    def _begin(self, module, args):
        self._sync(module)
        self._start = time.perf_counter()

    def _end(self, module, args, output):
        self._sync(module)
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _whisper_encoders(system, depth: int = 3) -> list[nn.Module]:
    """Whisper encoders among the modules a system holds (its own, an ASR's, a classifier's), once each.

    Looks through plain objects too (e.g. a recogniser that wraps a CTC model with a word LM).
    """
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    found: dict[int, nn.Module] = {}
    seen: set[int] = set()

    def visit(obj, level: int) -> None:
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.update((id(m), m) for m in obj.modules() if isinstance(m, WhisperEncoder))
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            for value in vars(obj).values():
                visit(value, level + 1)

    visit(system, 0)
    return list(found.values())
