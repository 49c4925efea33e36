"""A separate speech-emotion classifier for `cascade-ser`: Whisper encoder, masked mean, linear.

transformers' `WhisperForAudioClassification` averages over the padded 30 s window too; this one
pools only the clip's own steps (like BLSP-Emo's head) and can encode only the clip's length.
Any object with `labels` and `classify(waveform) -> {label: probability}` can stand in.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from blsp_emo.audio import log_mel
from blsp_emo.emotion import EMOTIONS, masked_mean, scores_by_label
from blsp_emo.model.encoder import encode


class EmotionClassifier(Protocol):
    labels: tuple[str, ...]

    def classify(self, waveform: np.ndarray) -> dict[str, float]: ...


class EmotionClassifierConfig(PretrainedConfig):
    model_type = "blsp_emo_ser"
    sub_configs = {"encoder_config": WhisperConfig}

    def __init__(
        self,
        encoder_config: WhisperConfig | dict | None = None,
        labels: tuple[str, ...] = EMOTIONS,
        encode_full_window: bool = True,
        **kwargs,
    ):
        if isinstance(encoder_config, dict):
            encoder_config = WhisperConfig(**encoder_config)
        self.encoder_config = encoder_config if encoder_config is not None else WhisperConfig()
        self.labels = tuple(labels)
        self.encode_full_window = bool(encode_full_window)
        super().__init__(**kwargs)


class WhisperEmotionClassifier(PreTrainedModel):
    config_class = EmotionClassifierConfig
    base_model_prefix = "ser"
    main_input_name = "input_features"

    def __init__(self, config: EmotionClassifierConfig, encoder: WhisperEncoder | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else WhisperEncoder(config.encoder_config)
        self.head = nn.Linear(config.encoder_config.d_model, len(config.labels))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # the encoder initialises itself; the head keeps PyTorch's default

    @classmethod
    def build(cls, encoder_config: WhisperConfig, labels: tuple[str, ...] = EMOTIONS, encode_full_window: bool = True):
        return cls(EmotionClassifierConfig(encoder_config, labels, encode_full_window))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def forward(self, input_features: torch.Tensor, frame_counts: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, n_frames), (N,) -> emotion logits (N, n_labels)."""
        hidden, lengths = encode(self.encoder, input_features, frame_counts, self.config.encode_full_window)
        return self.head(masked_mean(hidden, lengths))

    @torch.inference_mode()
    def classify(self, waveform: np.ndarray) -> dict[str, float]:
        enc = self.config.encoder_config
        features, counts = log_mel(
            [waveform], enc.num_mel_bins, enc.max_source_positions * 2, not self.config.encode_full_window
        )
        return scores_by_label(self(features, counts)[0].softmax(-1), self.labels)
