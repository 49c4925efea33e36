"""The modality adapter (the released "subsampler") and the one function that counts speech tokens.

Path (docs/paper.md §1.1): Whisper output (B, T, d_enc) -> Conv1d k5 s2 + GLU, three times (the last
one widens to the LLM size) -> residual bottleneck Linear(d_llm->512) GELU Linear(512->d_llm) ->
LayerNorm. Parameter names follow the released checkpoint so conversion is a rename-free copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def encoder_frame_count(mel_frames: torch.Tensor | int) -> torch.Tensor | int:
    """Whisper's stride-2 conv (k3, p1) halves the 100 Hz mel frames: (L - 1) // 2 + 1."""
    return (mel_frames - 1) // 2 + 1


def speech_token_count(
    mel_frames: torch.Tensor | int, kernel_sizes: tuple[int, ...] = (5, 5, 5), stride: int = 2
) -> torch.Tensor | int:
    """Number of LLM speech tokens for `mel_frames` valid mel frames (about 6.25 per second).

    This is the only place the count is computed; the adapter and the prompt builder both use it.
    1 s (100 frames) -> 7 tokens, 5 s -> 32, 10 s -> 63, 30 s -> 188.
    """
    n = encoder_frame_count(mel_frames)
    for k in kernel_sizes:
        n = conv_output_length(n, k, stride)
    return n


def conv_output_length(n: torch.Tensor | int, kernel_size: int, stride: int) -> torch.Tensor | int:
    padding = kernel_size // 2
    return (n + 2 * padding - kernel_size) // stride + 1


class Subsampler(nn.Module):
    """Stride-2 Conv1d + GLU layers along time. GLU halves the channels after each conv."""

    def __init__(self, in_dim: int, out_dim: int, kernel_sizes: tuple[int, ...], stride: int):
        super().__init__()
        n = len(kernel_sizes)
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                in_dim,
                2 * (out_dim if i == n - 1 else in_dim),
                k,
                stride=stride,
                padding=k // 2,
            )
            for i, k in enumerate(kernel_sizes)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_enc) -> (B, T', d_llm). With `lengths` (valid steps per row), every layer's
        output past a row's end is zeroed, so a row's result does not depend on its batch."""
        x = x.transpose(1, 2)  # (B, d_enc, T)
        for conv in self.conv_layers:
            if lengths is not None:
                x = x * (torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(1).to(
                    x.dtype
                )
                lengths = conv_output_length(lengths, conv.kernel_size[0], conv.stride[0])
            x = F.glu(conv(x), dim=1)
        return x.transpose(1, 2)  # (B, T', d_llm)


class Adapter(nn.Module):
    """Whisper encoder states (B, T, d_enc) -> speech embeddings for the LLM (B, T', d_llm)."""

    def __init__(
        self,
        encoder_dim: int,
        llm_dim: int,
        kernel_sizes: tuple[int, ...] = (5, 5, 5),
        stride: int = 2,
        inner_dim: int = 512,
    ):
        super().__init__()
        self.kernel_sizes = tuple(kernel_sizes)
        self.stride = stride
        self.subsampler = Subsampler(encoder_dim, llm_dim, self.kernel_sizes, stride)
        self.fc1 = nn.Linear(llm_dim, inner_dim, bias=False)
        self.fc2 = nn.Linear(inner_dim, llm_dim, bias=False)
        self.speech_ln = nn.LayerNorm(llm_dim, eps=1e-5)

    def output_length(self, mel_frames: torch.Tensor | int) -> torch.Tensor | int:
        return speech_token_count(mel_frames, self.kernel_sizes, self.stride)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder states (B, T, d_enc), valid steps per row (B,) -> speech embeddings (B, T', d_llm)."""
        x = self.subsampler(hidden, lengths)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.speech_ln(x)
