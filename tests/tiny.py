"""Tiny random BLSP-Emo parts for tests: same classes as full scale, sizes small enough for CPU."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2Config, WhisperConfig

from blsp_emo.audio import SAMPLE_RATE
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.tokenizer import ChatTokenizer, train_bpe_tokenizer
from blsp_emo.prompts import (
    SER_INSTRUCTION,
    STAGE1_INSTRUCTION,
    STAGE2_AUDIO_INSTRUCTION,
    STAGE2_TEACHER_INSTRUCTION,
    SYSTEM_EMPATHETIC,
    SYSTEM_PLAIN,
    TOLD_EMOTION,
)
from blsp_emo.systems.asr import CtcRecognizer, CtcRecognizerConfig
from blsp_emo.systems.ser import WhisperEmotionClassifier

WINDOW_POSITIONS = 500  # 1000 mel frames: a 10 s window

CORPUS = [
    SYSTEM_PLAIN,
    SYSTEM_EMPATHETIC,
    SER_INSTRUCTION,
    STAGE1_INSTRUCTION,
    STAGE2_AUDIO_INSTRUCTION,
    STAGE2_TEACHER_INSTRUCTION,
    TOLD_EMOTION,
    "system\nuser\nassistant\n",
    "I got the letter from the office today. That sounds wonderful, tell me more!",
    "I'm sorry to hear that. It must be hard for you. Héllo wörld ✓ 你好",
] * 3


def encoder_config() -> WhisperConfig:
    return WhisperConfig(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=WINDOW_POSITIONS,
        vocab_size=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )


def tokenizer() -> ChatTokenizer:
    return train_bpe_tokenizer(CORPUS, vocab_size=400)


def llm_config(vocab_size: int) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )


def model(seed: int = 0, lora_rank: int = 4, tok: ChatTokenizer | None = None) -> tuple[BlspEmoModel, ChatTokenizer]:
    """A tiny model whose LoRA B factors are non-zero, so LoRA visibly changes what it touches."""
    tok = tok or tokenizer()
    torch.manual_seed(seed)
    config = BlspEmoConfig(
        encoder_config(), llm_config(len(tok.hf)), adapter_inner_dim=16, lora_rank=lora_rank, lora_alpha=lora_rank
    )
    m = BlspEmoModel(config)
    if m.lora is not None:
        for pair in m.lora.pairs():
            torch.nn.init.normal_(pair.lora_B.weight, std=0.5)
    return m.eval(), tok


def asr(seed: int = 0) -> CtcRecognizer:
    torch.manual_seed(seed)
    return CtcRecognizer(CtcRecognizerConfig(encoder_config())).eval()


def ser(seed: int = 0) -> WhisperEmotionClassifier:
    torch.manual_seed(seed)
    return WhisperEmotionClassifier.build(encoder_config()).eval()


def tone(seconds: float, freq: float = 220.0, amplitude: float = 0.3, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A voiced-sounding test clip: a tone with a slow pitch glide and a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(int(freq))
    wave = amplitude * np.sin(2 * np.pi * (freq + 20 * t) * t) + 0.01 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def write_bases(folder, chat_lm: bool = False):
    """Tiny pretrained-base folders in the Hugging Face layouts `blsp_emo.bases` reads: a random
    Whisper (`folder/whisper`) and a Qwen2 LLM with a chat tokenizer (`folder/llm`). `chat_lm`
    trains the LLM for seconds on the demo sentences, so that it writes text (a random one stops
    at once or babbles whitespace, leaving a teacher nothing to say)."""
    from pathlib import Path

    from transformers import Qwen2ForCausalLM, WhisperForConditionalGeneration

    folder = Path(folder)
    enc = encoder_config()
    sizes = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins")
    config = WhisperConfig(
        **{k: getattr(enc, k) for k in (*sizes, "max_source_positions")},
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=16, vocab_size=64, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(folder / "whisper")
    _whisper_tokenizer(folder / "whisper", config.vocab_size)
    if chat_lm:
        from train.demo_world.build_steps import SCALES
        from train.demo_world.pretrain_lm import train_lm
        from train.demo_world.sentences import generate

        sentences = [(s.text, s.cue) for s in generate(12, 0, "train")]
        llm, tok, _ = train_lm(sentences, SCALES["ci"].lm, log=lambda *a: None)
    else:
        tok = tokenizer()
        llm = Qwen2ForCausalLM(llm_config(len(tok.hf)))
    llm.save_pretrained(folder / "llm")
    tok.save_pretrained(folder / "llm")
    return folder / "whisper", folder / "llm"


def _whisper_tokenizer(folder, vocab_size: int) -> None:
    """A word-level tokenizer in Whisper's clothes, so a cascade can transcribe with the tiny Whisper."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import WhisperTokenizerFast

    special = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    words = special + [f"w{i}" for i in range(vocab_size - len(special))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=special[0]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(folder / "tokenizer.json"))
    end = special[0]
    tok = WhisperTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), unk_token=end, bos_token=end, eos_token=end, pad_token=end
    )
    tok.add_special_tokens({"additional_special_tokens": special[1:]})
    tok.save_pretrained(folder)
