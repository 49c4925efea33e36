"""The composite BLSP-Emo configuration: encoder, adapter, LLM, audio-scoped LoRA, emotion labels.

`BlspEmoConfig()` with no arguments describes the released architecture (Whisper-large-v2 encoder,
Qwen-7B-Chat as Qwen2, subsampler adapter, r=16 LoRA, five emotions). Tiny configs for tests and the
demo scale pass their own sub-configs.
"""

from __future__ import annotations

from transformers import PretrainedConfig, Qwen2Config, WhisperConfig

from blsp_emo.emotion import EMOTIONS

# Qwen-v1 targets c_attn, c_proj (attention and MLP), w1, w2; in Qwen2 names that is every linear
# of a decoder block (c_attn -> q/k/v, attn.c_proj -> o, w2 -> gate, w1 -> up, mlp.c_proj -> down).
QWEN2_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def whisper_large_v2_encoder() -> WhisperConfig:
    return WhisperConfig(
        d_model=1280,
        encoder_layers=32,
        encoder_attention_heads=20,
        encoder_ffn_dim=5120,
        num_mel_bins=80,
        max_source_positions=1500,
        activation_function="gelu",
    )


def qwen_7b_chat_as_qwen2() -> Qwen2Config:
    """Qwen-7B-Chat expressed as a Qwen2 config (docs/paper.md §8.2: rope_theta 10000, FFN 11008)."""
    return Qwen2Config(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        use_sliding_window=False,
        attention_dropout=0.0,
    )


class BlspEmoConfig(PretrainedConfig):
    """Configuration of a BLSP-Emo model.

    Args:
        encoder_config: the Whisper encoder (dict or `WhisperConfig`).
        llm_config: the Qwen2-architecture LLM (dict or `Qwen2Config`).
        conv_kernel_sizes: one stride-`conv_stride` Conv1d + GLU per entry (reference: 5,5,5).
        adapter_inner_dim: bottleneck width of the adapter's residual MLP (reference: 512).
        lora_rank: rank of the audio-scoped LoRA; 0 builds no LoRA (a stage-1 model).
        lora_alpha, lora_dropout, lora_target_modules: as in the released `lora_config`.
        lora_shared_qkv_a: q, k and v of a layer share one A factor, as the released fused
            `c_attn` LoRA has (a LoRA trained from scratch; False keeps three, as older models).
        emotions: emotion labels in the head's output order.
        kd_temperature: temperature of the `response_kl` loss (reference: 2).
        encode_full_window: encode the whole 30 s window as released (True), or only each clip's
            length (False; demo-scale models are trained this way, see `encoder.py`).
    """

    model_type = "blsp_emo"
    sub_configs = {"encoder_config": WhisperConfig, "llm_config": Qwen2Config}

    def __init__(
        self,
        encoder_config: WhisperConfig | dict | None = None,
        llm_config: Qwen2Config | dict | None = None,
        conv_kernel_sizes: tuple[int, ...] = (5, 5, 5),
        conv_stride: int = 2,
        adapter_inner_dim: int = 512,
        lora_rank: int = 16,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.05,
        lora_target_modules: tuple[str, ...] = QWEN2_LORA_TARGETS,
        lora_shared_qkv_a: bool = False,
        emotions: tuple[str, ...] = EMOTIONS,
        kd_temperature: float = 2.0,
        encode_full_window: bool = True,
        **kwargs,
    ):
        if isinstance(encoder_config, dict):
            encoder_config = WhisperConfig(**encoder_config)
        if isinstance(llm_config, dict):
            llm_config = Qwen2Config(**llm_config)
        self.encoder_config = encoder_config if encoder_config is not None else whisper_large_v2_encoder()
        self.llm_config = llm_config if llm_config is not None else qwen_7b_chat_as_qwen2()
        self.conv_kernel_sizes = tuple(int(k) for k in conv_kernel_sizes)
        self.conv_stride = int(conv_stride)
        self.adapter_inner_dim = int(adapter_inner_dim)
        self.lora_rank = int(lora_rank)
        self.lora_alpha = float(lora_alpha)
        self.lora_dropout = float(lora_dropout)
        self.lora_target_modules = tuple(lora_target_modules)
        self.lora_shared_qkv_a = bool(lora_shared_qkv_a)
        self.emotions = tuple(emotions)
        self.kd_temperature = float(kd_temperature)
        self.encode_full_window = bool(encode_full_window)
        self._validate()
        super().__init__(**kwargs)

    def _validate(self) -> None:
        if not self.conv_kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.conv_kernel_sizes):
            raise ValueError(f"conv_kernel_sizes must be odd positive integers, got {self.conv_kernel_sizes}")
        if self.conv_stride < 1:
            raise ValueError(f"conv_stride must be >= 1, got {self.conv_stride}")
        if self.adapter_inner_dim < 1:
            raise ValueError(f"adapter_inner_dim must be >= 1, got {self.adapter_inner_dim}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0 = no LoRA), got {self.lora_rank}")
        unknown = set(self.lora_target_modules) - set(QWEN2_LORA_TARGETS)
        if unknown:
            raise ValueError(f"lora_target_modules has {sorted(unknown)}; choose from {QWEN2_LORA_TARGETS}")
        if len(set(self.emotions)) != len(self.emotions) or not self.emotions:
            raise ValueError(f"emotions must be distinct and non-empty, got {self.emotions}")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")

    @property
    def window_seconds(self) -> float:
        """Longest audio the encoder takes in one pass: 2 mel frames per position, 100 frames/s."""
        return self.encoder_config.max_source_positions * 2 / 100.0
