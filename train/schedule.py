"""Learning-rate schedule: warmup to the peak, then linear decay to zero at the last step.

The released runs used DeepSpeed's `WarmupDecayLR` with no `warmup_type`, so DeepSpeed's default
`log` warmup applied (docs/paper.md §4): during warmup the rate is peak * log(step + 1) / log(warmup),
which reaches a tenth of the peak by step 1 of 1000 and half of it by step 31, far faster than a
linear ramp. We default to `log` to reproduce the paper's runs; `linear` is the common choice.

DeepSpeed's first optimizer step runs at `warmup_min_lr` (0) and its gamma for step k is applied
from step k + 1; here step k (0-based count of finished optimizer steps) gets gamma(k) directly,
so the ramp is the same curve shifted one step earlier.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

WARMUP_TYPES = ("log", "linear")


def lr_factor(step: int, warmup_steps: int, total_steps: int, warmup_type: str = "log") -> float:
    """Fraction of the peak learning rate for optimizer step `step` (0-based)."""
    if warmup_type not in WARMUP_TYPES:
        raise ValueError(f"warmup_type must be one of {WARMUP_TYPES}, got {warmup_type!r}")
    if step < warmup_steps:
        if warmup_type == "log":
            # DeepSpeed clamps warmup_num_steps to >= 2 so that log(warmup) > 0.
            return math.log(step + 1) / math.log(max(2, warmup_steps))
        return step / warmup_steps
    return max(0.0, (total_steps - step) / max(1.0, total_steps - warmup_steps))


def warmup_decay(optimizer: Optimizer, warmup_steps: int, total_steps: int, warmup_type: str = "log") -> LambdaLR:
    lr_factor(0, warmup_steps, total_steps, warmup_type)  # validate before the first step
    return LambdaLR(
        optimizer,
        partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, warmup_type=warmup_type),
    )
