"""What `bench` prints, and decode speed measured against the memory-bandwidth bound."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import torch
from torch import nn

from blsp_emo.bench.measurements import Report, Result

# --- decode speed against the memory-bandwidth bound --------------------------------------------


def copy_bandwidth(device: str = "cpu", megabytes: int = 512, repeats: int = 5) -> float:
    """Measured memory bandwidth in bytes/s: the median of copying a buffer (read + write bytes)."""
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        if src.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if src.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(times[1:])


def decode_bound(llm: nn.Module, result: Result, new_tokens: int, bandwidth: float) -> dict:
    """Per-token decode time measured vs the bound of reading every LLM weight once per token."""
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.parameters())
    measured = (result.total_s - result.first_token_s) / max(new_tokens - 1, 1)
    bound = weight_bytes / bandwidth
    return {
        "system": result.system,
        "clip_s": result.clip_s,
        "llm_weight_mb": round(weight_bytes / 2**20, 1),
        "bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "bound_ms_per_token": round(bound * 1e3, 3),
        "measured_ms_per_token": round(measured * 1e3, 3),
        "fraction_of_bound": round(bound / measured, 3),
    }


# --- printing -----------------------------------------------------------------------------------


def format_report(report: Report) -> Iterator[str]:
    m = report.machine
    yield (
        f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} thread(s)), "
        f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}; load average {m['load_average']} -> "
        f"{m.get('load_average_end')}"
    )
    s = report.settings
    yield (
        f"clips: {s['clips']}; {s['new_tokens']} greedy tokens per reply; median of {s['repeats']} after "
        f"{s['warmup']} warm-up; scale {s.get('scale')}"
    )
    yield f"first audio: the time until the reply's first sentence is complete, plus speaking it ({s.get('voice')} voice)"
    yield ""
    yield "| system | clip s | first token ms | first audio ms | total ms | encoder ms | RTF | peak RSS MB |"
    yield "|---|---|---|---|---|---|---|---|"
    for r in report.results:
        audio = "–" if r.first_audio_s is None else f"{r.first_audio_s * 1e3:.1f}"
        yield (
            f"| `{r.system}` | {r.clip_s:g} | {r.first_token_s * 1e3:.1f} | {audio} | {r.total_s * 1e3:.1f} | "
            f"{r.encoder_s * 1e3:.1f} | {r.rtf:.4f} | {r.peak_rss_mb:.0f} |"
        )
    ratios = report.ratios()
    if ratios:
        yield ""
        yield "| ratio | clip s | first token | first audio | total |"
        yield "|---|---|---|---|---|"
        for q in ratios:
            audio = f"{q['first_audio']:.2f}" if "first_audio" in q else "–"
            yield f"| {q['of']} | {q['clip_s']:g} | {q['first_token']:.2f} | {audio} | {q['total']:.2f} |"
    if report.turns:
        yield ""
        yield "| system | turn | first token ms, re-encode history | with KV reuse | total ms, re-encode | with reuse | same reply |"
        yield "|---|---|---|---|---|---|---|"
        for t in report.turns:
            yield (
                f"| `{t.system}` | {t.turns} ({t.clip_s:g} s clips) | {t.first_token_s_recompute * 1e3:.1f} | "
                f"{t.first_token_s_reuse * 1e3:.1f} | {t.total_s_recompute * 1e3:.1f} | {t.total_s_reuse * 1e3:.1f} | "
                f"{'yes' if t.same_tokens else 'no'} |"
            )
    if report.decode:
        d = report.decode
        yield ""
        yield (
            f"decode ({d['system']}, {d['clip_s']:g} s clip): {d['measured_ms_per_token']} ms/token measured; "
            f"bound {d['bound_ms_per_token']} ms/token = {d['llm_weight_mb']} MB of LLM weights / "
            f"{d['bandwidth_gb_s']} GB/s measured copy bandwidth ({d['fraction_of_bound']:.1%} of the bound)"
        )
