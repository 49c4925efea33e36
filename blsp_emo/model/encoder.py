"""Running a Whisper encoder over a batch of clips: the released full window, or each clip's length.

The released model always encodes 30 s (padding included), because transformers' `WhisperEncoder`
accepts exactly `2 * max_source_positions` mel frames. That is faithful and is the default. The
clip-length mode runs the same submodules (convs, positions, layers, final norm) over only the
frames the longest clip needs, with padded frames masked out as attention keys, so a 3 s clip costs
3 s of compute and does not depend on the clips batched with it. Demo-scale models are trained this
way; applying it to the released model changes its outputs (see `python -m blsp_emo bench`).
"""

from __future__ import annotations

import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from blsp_emo.model.adapter import encoder_frame_count


def encode(
    encoder: WhisperEncoder, features: torch.Tensor, frame_counts: torch.Tensor, full_window: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, n_mels, n_frames) log-mel, valid frames (N,) -> states (N, T, d) and valid steps (N,)."""
    param = encoder.conv1.weight
    features = features.to(device=param.device, dtype=param.dtype)
    frame_counts = frame_counts.to(param.device)
    lengths = encoder_frame_count(frame_counts)
    if full_window:
        return encoder(features).last_hidden_state, lengths
    return _encode_clips(encoder, features, frame_counts, lengths), lengths


def _encode_clips(
    encoder: WhisperEncoder, features: torch.Tensor, frame_counts: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    steps = int(lengths.max())
    # Zero every frame past a clip's end before each conv, so its edge sees what a lone clip sees.
    frames = (torch.arange(2 * steps, device=features.device)[None, :] < frame_counts[:, None]).unsqueeze(1)
    x = features[..., : 2 * steps] * frames
    x = torch.nn.functional.gelu(encoder.conv1(x)) * frames
    x = torch.nn.functional.gelu(encoder.conv2(x)).transpose(1, 2)  # (N, steps, d)
    x = x + encoder.embed_positions.weight[:steps]
    x = torch.nn.functional.dropout(x, p=encoder.dropout, training=encoder.training)
    padded = torch.arange(steps, device=x.device)[None, :] >= lengths[:, None]  # (N, steps) keys to ignore
    mask = torch.zeros(padded.shape, dtype=x.dtype, device=x.device)
    mask = mask.masked_fill(padded, torch.finfo(x.dtype).min)[:, None, None, :]  # (N, 1, 1, steps)
    for layer in encoder.layers:
        x = layer(x, mask)
    return encoder.layer_norm(x)
