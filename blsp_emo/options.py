"""How a reply is decoded: the options every system takes, in a module light enough for any process."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode a reply. Defaults follow the released chat demo (reference §2.4)."""

    max_new_tokens: int = 512
    min_new_tokens: int = 1  # as released: a reply is never empty
    greedy: bool = False
    temperature: float = 0.5
    top_p: float = 0.5
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = None  # None draws one; the Reply reports it so a turn can be replayed

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in 0..max_new_tokens, got {self.min_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}; use greedy=True")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError(f"top_k must be >= 0 and repetition_penalty > 0, got {self.top_k}, {self.repetition_penalty}")

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else random.SystemRandom().randrange(2**31)
