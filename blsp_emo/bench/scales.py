"""Random-weights systems of a given architecture, to measure speed where no weights can be downloaded.

`full` is the released architecture (`BlspEmoConfig()`: Whisper-large-v2 encoder, Qwen-7B-Chat as
Qwen2, subsampler adapter, r=16 LoRA); `tiny` has the bundled demo models' shapes; `medium` is a
CPU-affordable size in between (a Whisper-base-sized encoder). Random weights
cost what trained ones cost per token. The tokenizer is a word-level vocabulary of the LLM's full
size (the real Qwen vocabulary is a download away), so every id a random LLM emits decodes, and
prompts split into about as many tokens as with a subword tokenizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, WhisperConfig

from blsp_emo.decoding.prefix_cache import PrefixCache
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.prompts import END_OF_TEXT, IM_END, IM_START, SPECIAL_TOKENS, SYSTEM_EMPATHETIC
from blsp_emo.systems.asr import CtcRecognizer, CtcRecognizerConfig
from blsp_emo.systems.blsp import BlspSystem
from blsp_emo.systems.cascade import CascadeSystem

SCALES = ("tiny", "medium", "full")


def scale_config(scale: str, encode_full_window: bool = True) -> BlspEmoConfig:
    if scale == "tiny":  # the bundled demo models' shapes (docs/demo_world.md)
        encoder = WhisperConfig(
            d_model=128,
            encoder_layers=4,
            encoder_attention_heads=4,
            encoder_ffn_dim=512,
            num_mel_bins=80,
            max_source_positions=1500,
        )
        llm = Qwen2Config(
            vocab_size=2048,
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            rope_theta=10000.0,
        )
        return BlspEmoConfig(encoder, llm, adapter_inner_dim=256, encode_full_window=encode_full_window)
    if scale == "full":
        return BlspEmoConfig(encode_full_window=encode_full_window)
    if scale == "medium":  # Whisper-base-sized encoder (30 s window), a 0.1 B-parameter Qwen2
        encoder = WhisperConfig(
            d_model=512,
            encoder_layers=6,
            encoder_attention_heads=8,
            encoder_ffn_dim=2048,
            num_mel_bins=80,
            max_source_positions=1500,
        )
        llm = Qwen2Config(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=8,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=8192,
            tie_word_embeddings=False,
            rope_theta=10000.0,
        )
        return BlspEmoConfig(encoder, llm, encode_full_window=encode_full_window)
    raise ValueError(f"unknown scale {scale!r}; choose from {SCALES} (or 'demo' for the bundled models)")


@contextlib.contextmanager
def building_on(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on `device` in `dtype` (a 7B model never exists in fp32 on the CPU)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def word_tokenizer(vocab_size: int) -> ChatTokenizer:
    """A word-level tokenizer with exactly `vocab_size` ids: ChatML specials, the prompt's words, fillers."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [*SPECIAL_TOKENS, "[UNK]", *dict.fromkeys(SYSTEM_EMPATHETIC.replace(".", " .").split())]
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=END_OF_TEXT, unk_token="[UNK]")
    hf.add_special_tokens({"additional_special_tokens": [IM_START]})
    return ChatTokenizer(hf)


def random_model(config: BlspEmoConfig, device: str, dtype: torch.dtype, seed: int = 0) -> BlspEmoModel:
    torch.manual_seed(seed)
    with building_on(device, dtype):
        model = BlspEmoModel(config)
    return model.eval()


def random_systems(
    config: BlspEmoConfig, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> list:
    """`blsp-emo` and `cascade` on one random LLM; the cascade's CTC recogniser has the same encoder shape."""
    model = random_model(config, device, dtype, seed)
    tokenizer = word_tokenizer(config.llm_config.vocab_size)
    with building_on(device, dtype):
        asr = CtcRecognizer(CtcRecognizerConfig(config.encoder_config, encode_full_window=config.encode_full_window))
    window = config.window_seconds
    return [
        BlspSystem(
            "blsp-emo",
            "random weights, released architecture",
            model,
            tokenizer,
            SYSTEM_EMPATHETIC,
            True,
            PrefixCache(),
        ),
        CascadeSystem(
            "cascade",
            "random weights: CTC ASR -> the same LLM",
            asr.eval(),
            model.llm,
            tokenizer,
            SYSTEM_EMPATHETIC,
            None,
            window,
            PrefixCache(),
        ),
    ]
