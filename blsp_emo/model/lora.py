"""Audio-scoped LoRA ("PLoRA", docs/paper.md §1.2): a low-rank delta that exists only at speech positions.

Every targeted linear of the LLM computes `W x + (B A dropout(x)) * scaling * mask`, where `mask` is
1 at speech-embedding positions and 0 elsewhere. Outside `scope(...)` the delta is not computed at
all, so text-only use, the teacher pass and every decoded token go through the base weights exactly.

Why forward hooks and a context variable instead of wrapping the linears (as peft does): the LLM
stays a plain `Qwen2ForCausalLM` whose state dict is the base model's, so one LLM instance can be
shared read-only by BLSP-Emo and the cascades; and the Qwen2 forward has no argument that reaches
its linears, so the per-call mask travels in a context variable, which is private to each thread
and each asyncio task (concurrent requests never see each other's mask). Gradient checkpointing
would recompute outside the scope, so `scope` must wrap a forward without it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVE: ContextVar[tuple[ScopedLoRA, torch.Tensor] | None] = ContextVar("blsp_emo_lora_scope", default=None)


class LoRAPair(nn.Module):
    """The A (in -> r) and B (r -> out) factors for one linear; B starts at zero.

    With `shares` the pair has no A of its own and uses that pair's: k and v reuse q's, which is
    the released fused `c_attn` LoRA (one A, one B over q|k|v) written per linear.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, shares: LoRAPair | None = None):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False) if shares is None else None
        self.lora_B = nn.Linear(rank, out_features, bias=False)
        if self.lora_A is not None:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        # Kept out of the module tree (a plain attribute), so the A is stored and counted once;
        # copy.deepcopy maps it to the copy's own q pair.
        object.__setattr__(self, "shares", shares)

    @property
    def factor_a(self) -> nn.Linear:
        return self.lora_A if self.shares is None else self.shares.lora_A


SHARED_A = {"k_proj": "q_proj", "v_proj": "q_proj"}  # linear -> the sibling whose A it uses


class ScopedLoRA(nn.Module):
    """LoRA factors for the targeted linears of `llm`, active only inside `scope(mask)`.

    State-dict keys mirror the LLM's module paths, e.g.
    `model.layers.0.self_attn.q_proj.lora_A.weight`.
    """

    def __init__(
        self,
        llm: nn.Module,
        rank: int,
        alpha: float,
        dropout: float,
        target_modules: tuple[str, ...],
        shared_qkv_a: bool = False,
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f"ScopedLoRA needs rank >= 1, got {rank}")
        self.scaling = alpha / rank
        self.dropout = dropout
        self.layers = nn.ModuleDict()
        self._hooks = []
        made: dict[str, LoRAPair] = {}
        for path, module in llm.named_modules():
            if isinstance(module, nn.Linear) and path.rsplit(".", 1)[-1] in target_modules:
                parent, name = path.rsplit(".", 1) if "." in path else ("", path)
                owner = made.get(f"{parent}.{SHARED_A[name]}") if shared_qkv_a and name in SHARED_A else None
                pair = LoRAPair(module.in_features, module.out_features, rank, shares=owner)
                made[path] = pair
                self._insert(path, pair)
                self._hooks.append(module.register_forward_hook(self._hook_for(pair)))
        if not self._hooks:
            raise ValueError(f"no linear of the LLM is named like {target_modules}")

    def _insert(self, path: str, pair: LoRAPair) -> None:
        node = self.layers
        *parents, leaf = path.split(".")
        for part in parents:
            if part not in node:
                node[part] = nn.ModuleDict()
            node = node[part]
        node[leaf] = pair

    def pairs(self) -> Iterator[LoRAPair]:
        return (m for m in self.modules() if isinstance(m, LoRAPair))

    def _hook_for(self, pair: LoRAPair):
        # A partial over a bound method (not a closure), so copy.deepcopy(model) rebinds the hook
        # to the copy's own ScopedLoRA and factors.
        return functools.partial(self._add_delta, pair)

    def _add_delta(self, pair: LoRAPair, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        active = _ACTIVE.get()
        if active is None or active[0] is not self:
            return output
        mask = active[1]
        x = args[0]
        if x.shape[:-1] != mask.shape:
            raise RuntimeError(
                f"LoRA scope mask {tuple(mask.shape)} does not match the input {tuple(x.shape[:-1])}; "
                "scope(...) must wrap exactly one forward over the masked sequence"
            )
        x = F.dropout(x, self.dropout, training=self.training)
        a = pair.factor_a
        delta = pair.lora_B(a(x.to(a.weight.dtype)))
        return output + (delta * (self.scaling * mask.unsqueeze(-1))).to(output.dtype)

    @contextlib.contextmanager
    def scope(self, mask: torch.Tensor) -> Iterator[None]:
        """Apply the LoRA delta at positions where `mask` (B, T) is 1 during the enclosed forward."""
        token = _ACTIVE.set((self, mask.to(self._dtype())))
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
