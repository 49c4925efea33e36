"""Speech recognition for the cascades: a Whisper encoder with a CTC head over characters.

At demo scale `train/` pretrains this encoder with CTC (which also gives BLSP-Emo its encoder); any
object with `transcribe(waveform) -> str` can stand in, e.g. a full Whisper on a GPU machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from blsp_emo.audio import log_mel
from blsp_emo.model.encoder import encode
from blsp_emo.systems.ctc_decoding import BeamOptions, LexiconDecoder

ALPHABET = " abcdefghijklmnopqrstuvwxyz'0123456789"


class SpeechRecognizer(Protocol):
    def transcribe(self, waveform: np.ndarray) -> str: ...


class CtcRecognizerConfig(PretrainedConfig):
    model_type = "blsp_emo_ctc"
    sub_configs = {"encoder_config": WhisperConfig}

    def __init__(
        self,
        encoder_config: WhisperConfig | dict | None = None,
        alphabet: str = ALPHABET,
        encode_full_window: bool = True,
        **kwargs,
    ):
        if isinstance(encoder_config, dict):
            encoder_config = WhisperConfig(**encoder_config)
        self.encoder_config = encoder_config if encoder_config is not None else WhisperConfig()
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        self.alphabet = alphabet
        self.encode_full_window = bool(encode_full_window)
        super().__init__(**kwargs)


class CtcRecognizer(PreTrainedModel):
    """Log-mel (B, n_mels, n_frames) -> per-frame character logits (B, n_frames/2, 1 + |alphabet|).

    Index 0 is the CTC blank; character i of the alphabet is index i + 1.
    """

    config_class = CtcRecognizerConfig
    base_model_prefix = "ctc"
    main_input_name = "input_features"

    def __init__(self, config: CtcRecognizerConfig, encoder: WhisperEncoder | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else WhisperEncoder(config.encoder_config)
        self.head = nn.Linear(config.encoder_config.d_model, len(config.alphabet) + 1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # the encoder initialises itself; the head keeps PyTorch's default

    def forward(self, input_features: torch.Tensor, frame_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Character logits (N, T, 1 + |alphabet|) and valid steps (N,)."""
        hidden, lengths = encode(self.encoder, input_features, frame_counts, self.config.encode_full_window)
        return self.head(hidden), lengths

    def ctc_loss(self, input_features: torch.Tensor, frame_counts: torch.Tensor, texts: list[str]) -> torch.Tensor:
        logits, lengths = self(input_features, frame_counts)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, N, V)
        targets = [torch.tensor(self.encode_text(t), dtype=torch.long) for t in texts]
        return F.ctc_loss(
            log_probs,
            torch.cat(targets).to(self.device),
            lengths,
            torch.tensor([len(t) for t in targets], device=self.device),
            zero_infinity=True,
        )

    def encode_text(self, text: str) -> list[int]:
        index = {c: i + 1 for i, c in enumerate(self.config.alphabet)}
        return [index[c] for c in text.lower() if c in index]

    @torch.inference_mode()
    def transcribe(self, waveform: np.ndarray) -> str:
        return self.greedy_decode(*self.clip_logits(waveform))[0]

    @torch.inference_mode()
    def clip_logits(self, waveform: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One waveform's character logits (1, T, V) and valid steps (1,)."""
        enc = self.config.encoder_config
        features, counts = log_mel(
            [waveform], enc.num_mel_bins, enc.max_source_positions * 2, not self.config.encode_full_window
        )
        return self(features.to(self.device, self.dtype), counts.to(self.device))

    def greedy_decode(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy CTC for each row of (N, T, V) logits over its valid steps: best class per step,
        repeats collapsed, blanks dropped, spaces normalised."""
        texts = []
        for row, length in zip(logits.argmax(-1).tolist(), lengths.tolist()):
            chars, previous = [], 0
            for i in row[: int(length)]:
                if i != previous and i != 0:
                    chars.append(self.config.alphabet[i - 1])
                previous = i
            texts.append(" ".join("".join(chars).split()))
        return texts


@dataclass(frozen=True)
class LexiconRecognizer:
    """A CTC model decoded with the word LM saved beside it (see `ctc_decoding`)."""

    model: CtcRecognizer
    decoder: LexiconDecoder

    def transcribe(self, waveform: np.ndarray) -> str:
        logits, lengths = self.model.clip_logits(waveform)
        return self.decoder.decode(logits[0, : int(lengths[0])].float().log_softmax(-1).cpu().numpy())


def with_word_lm(model: CtcRecognizer, folder: str | Path, options: BeamOptions = BeamOptions()) -> SpeechRecognizer:
    """`model` decoded with `folder`'s word LM when it has one, else greedily."""
    decoder = LexiconDecoder.load(folder, model.config.alphabet, options)
    return model if decoder is None else LexiconRecognizer(model, decoder)
