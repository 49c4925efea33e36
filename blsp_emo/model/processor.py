"""Prompt pieces + audio clips -> the tensors a BLSP-Emo model takes (`SpeechPrompt`).

Inference and training both come through here, so features, speech-token counts and the ChatML
layout cannot drift apart between the two.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from blsp_emo.audio import HOP_LENGTH, log_mel
from blsp_emo.model.adapter import speech_token_count
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import SpeechPrompt
from blsp_emo.model.tokenizer import IGNORE_INDEX, ChatTokenizer, EncodedPrompt
from blsp_emo.prompts import Piece


def clip_features(clips: Sequence[np.ndarray], config: BlspEmoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel features (N, n_mels, n_frames) and valid frame counts (N,) of each clip.

    A clip-length encoder gets only the frames it reads (the 30 s window's STFT was 40 % of a
    demo-scale reply's time to first token; `python -m blsp_emo bench`).
    """
    enc = config.encoder_config
    return log_mel(list(clips), enc.num_mel_bins, enc.max_source_positions * 2, not config.encode_full_window)


def frame_counts(clips: Sequence[np.ndarray], config: BlspEmoConfig) -> torch.Tensor:
    """The valid frame count `clip_features` gives each clip (one per started hop), without the features."""
    window = config.encoder_config.max_source_positions * 2
    return torch.tensor([min(-(-len(c) // HOP_LENGTH), window) for c in clips], dtype=torch.long)


def speech_lengths(frame_counts: torch.Tensor, config: BlspEmoConfig) -> list[int]:
    return speech_token_count(frame_counts, config.conv_kernel_sizes, config.conv_stride).tolist()


def build_prompt(
    tokenizer: ChatTokenizer,
    pieces: Sequence[Piece],
    clips: Sequence[np.ndarray],
    config: BlspEmoConfig,
) -> SpeechPrompt:
    """One prompt row; speech slot k is filled by `clips[k]`."""
    features = counts = None
    lengths: list[int] = []
    if clips:
        features, counts = clip_features(clips, config)
        lengths = speech_lengths(counts, config)
    enc = tokenizer.encode_pieces(pieces, lengths)
    input_ids, speech_mask, _, _ = pad_rows([enc], tokenizer.pad_id)
    return SpeechPrompt(input_ids, speech_mask, None, features, counts)


def pad_rows(rows: Sequence[EncodedPrompt], pad_id: int):
    """Right-pad encoded prompts: input_ids, speech_mask, attention_mask, labels, each (B, T)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    speech = torch.zeros((len(rows), width), dtype=torch.bool)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        speech[i, :n] = torch.tensor(r.speech_mask)
        attention[i, :n] = 1
        labels[i, :n] = torch.tensor(r.labels)
    return ids, speech, attention, labels
