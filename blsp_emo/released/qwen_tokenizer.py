"""Qwen v1's tokenizer (`qwen.tiktoken`, docs/paper.md §8.4) as a Hugging Face fast tokenizer.

The released checkpoint ships only `qwen.tiktoken`: one `base64(token) rank` line per byte-level
BPE token. tiktoken merges, inside each regex pre-token, the adjacent pair whose concatenation has
the lowest rank, and takes a pre-token whole when it is itself in the vocabulary. A `tokenizers`
BPE reproduces that with merges ordered by the rank of their result and `ignore_merges=True`;
transformers' `TikTokenConverter` builds exactly that. So the vocabulary becomes a `tokenizer.json`
once, and `ChatTokenizer` (and every saved model folder) works unchanged, with no tiktoken at run
time. Tests check the ids against tiktoken itself.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from tokenizers import Tokenizer, normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.prompts import END_OF_TEXT, IM_END, IM_START

VOCAB_FILE = "qwen.tiktoken"

# QWenTokenizer's pre-tokenisation regex, verbatim (docs/paper.md §8.4). Unlike GPT-4's, digits split
# one at a time (`\p{N}`, not `\p{N}{1,3}`).
PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Special tokens follow the ranks in this order: <|endoftext|> = n_ranks (151643 in the release),
# then <|im_start|>, <|im_end|>, <|extra_0|> ... <|extra_204|> (151646 ... 151850).
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205)))


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """`qwen.tiktoken` -> {token bytes: rank}; ranks must be exactly 0..n-1, each token once."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error) as e:
                raise ValueError(f"{path}:{line_no}: expected 'base64-token rank', got {line[:60]!r}") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(
            f"{path}: ranks must be 0..{len(ranks) - 1} with one token each, so the special tokens "
            "get the reference ids; the file is not a Qwen v1 vocabulary"
        )
    return ranks


class _RanksConverter(TikTokenConverter):
    """transformers' tiktoken converter, fed ranks we read ourselves.

    tiktoken's own loader caches every file it reads under the temp dir keyed by its path, so a
    replaced file at the same path would silently give the old vocabulary.
    """

    def __init__(self, ranks: dict[bytes, int]):
        super().__init__(pattern=PAT_STR, extra_special_tokens=SPECIAL_TOKENS)
        self._ranks = ranks

    def load_tiktoken_bpe(self, _path) -> dict[bytes, int]:
        return self._ranks


def qwen_backend(ranks: dict[bytes, int]) -> Tokenizer:
    """A `tokenizers.Tokenizer` that encodes exactly as QWenTokenizer with `allowed_special=set()`."""
    backend = _RanksConverter(ranks).converted()
    backend.normalizer = normalizers.NFC()  # QWenTokenizer NFC-normalises text before encoding
    wrong = {
        token: backend.token_to_id(token)
        for i, token in enumerate(SPECIAL_TOKENS)
        if backend.token_to_id(token) != len(ranks) + i
    }
    if wrong:
        raise ValueError(f"special tokens landed at {wrong}; expected {END_OF_TEXT} at {len(ranks)} onwards")
    return backend


def load_qwen_tokenizer(path: str | Path) -> ChatTokenizer:
    """A ChatTokenizer over `qwen.tiktoken` (a file, or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {VOCAB_FILE} at {path}; the released checkpoint ships it next to config.json")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=qwen_backend(read_ranks(path)),
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        bos_token=None,
        additional_special_tokens=[IM_START],
    )
    return ChatTokenizer(hf)
