"""A separate speech-emotion classifier for `cascade-ser`: transformers' Whisper audio classifier.

Any object with `labels` and `classify(waveform) -> {label: probability}` can stand in.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForAudioClassification

from .audio import log_mel
from .emotion import EMOTIONS, scores_by_label


class EmotionClassifier(Protocol):
    labels: tuple[str, ...]

    def classify(self, waveform: np.ndarray) -> dict[str, float]: ...


class WhisperEmotionClassifier(WhisperForAudioClassification):
    """Whisper encoder, mean-pooled, linear head over the five BLSP-Emo emotions."""

    @classmethod
    def build(cls, encoder_config: WhisperConfig, labels: tuple[str, ...] = EMOTIONS) -> "WhisperEmotionClassifier":
        config = WhisperConfig(**encoder_config.to_dict())
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        return cls(config)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config.id2label[i] for i in range(len(self.config.id2label)))

    @torch.inference_mode()
    def classify(self, waveform: np.ndarray) -> dict[str, float]:
        features, _ = log_mel([waveform], self.config.num_mel_bins, self.config.max_source_positions * 2)
        logits = self(input_features=features.to(self.device, self.dtype)).logits[0]
        return scores_by_label(logits.softmax(-1), self.labels)
