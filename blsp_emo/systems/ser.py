"""A separate speech-emotion classifier for `cascade-ser`: Whisper encoder, masked mean, linear.

transformers' `WhisperForAudioClassification` averages over the padded 30 s window too; this one
pools only the clip's own steps (like BLSP-Emo's head) and can encode only the clip's length.
Any object with `labels` and `classify(waveform) -> {label: probability}` can stand in.
"""

from __future__ import annotations

from pathlib import Path
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

    def save_on_bases(self, folder: Path, encoder_base: dict) -> dict:
        """Store the head and the encoder tensors fine-tuning changed over `encoder_base` (a base
        record: source and sha256), as `blsp_emo.model.on_bases` stores a BLSP-Emo model."""
        from blsp_emo.model.on_bases import save_changes

        encoder = _base_encoder(encoder_base)
        reference = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        self.config.bases = {"encoder": dict(encoder_base)}
        self.config.save_pretrained(str(folder))
        return save_changes(self.state_dict(), reference, folder)

    @classmethod
    def load_on_bases(cls, folder: Path) -> WhisperEmotionClassifier:
        """A classifier stored by `save_on_bases`: the recorded base's encoder, changes laid over a copy."""
        import copy

        from blsp_emo.model.on_bases import TRAINED_FILE, read_changes

        config = EmotionClassifierConfig.from_pretrained(str(folder))
        model = cls(config, encoder=copy.deepcopy(_base_encoder(config.bases["encoder"])))
        stored = read_changes(folder / TRAINED_FILE)
        result = model.load_state_dict({k: v.float() for k, v in stored.items()}, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("encoder.")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{folder / TRAINED_FILE} does not fit the classifier (missing {missing[:3]}, unexpected "
                f"{result.unexpected_keys[:3]}); rebuild it with `python -m train demo`"
            )
        return model.eval()

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


def _base_encoder(record: dict) -> WhisperEncoder:
    """The Whisper encoder of a recorded base (source and sha256), shared read-only with every model on it."""
    from blsp_emo.model.on_bases import base_encoder

    return base_encoder(record["source"], record["sha256"])
