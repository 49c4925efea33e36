"""The speech corpus of stage-0 pretraining (`pretrain_speech.py`): features, batches, augmentation.

A manifest's clips are decoded once into log-mel features (the same `log_mel` inference uses),
kept in memory as float16 over each clip's own frames (`Corpus`), and served in batches of similar
length (`length_batches`), perturbed (VTLP, tempo) and masked (SpecAugment) for training.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from blsp_emo.audio import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, AudioError, load_audio, log_mel
from train.manifest import ManifestError, read_rows

N_MELS = 80


# --- features -----------------------------------------------------------------------------------

READ_BLOCK = 512  # clips decoded at a time: bounds the waveforms held in memory
MEL_CHUNK = 32  # clips per log_mel call, sorted by length
# log_mel pads each chunk past its longest clip; any margin >= n_fft / 2 samples (2 frames) gives
# every valid frame exactly its value in the 30 s window, and rounding to 100 frames keeps the
# number of distinct windows (hence of cached feature extractors in log_mel) small.
MARGIN_FRAMES = 2


@dataclass(frozen=True)
class Corpus:
    """A manifest's clips as (n_mels, frames) float16 log-mel, with their labels."""

    features: tuple[torch.Tensor, ...]
    texts: tuple[str, ...]
    emotions: tuple[str, ...]  # "" where the row has none
    voices: tuple[str, ...]  # "" where the row has none
    dropped: int = 0  # rows whose audio could not be used

    @cached_property
    def frames(self) -> list[int]:
        return [f.shape[1] for f in self.features]

    @property
    def hours(self) -> float:
        return sum(self.frames) / FRAMES_PER_SECOND / 3600


def load_corpus(manifest: str | Path, n_mels: int = N_MELS) -> Corpus:
    """Decode every clip of `manifest` once and keep its features; unusable audio is skipped and counted."""
    rows = list(read_rows([manifest]))
    features, texts, emotions, voices, dropped = [], [], [], [], 0
    for start in range(0, len(rows), READ_BLOCK):
        waves = []
        for row in rows[start : start + READ_BLOCK]:
            try:
                waves.append(load_audio(row.fields["audio"]))
            except AudioError as e:
                warnings.warn(f"{row.where}: skipped ({e})", stacklevel=2)
                dropped += 1
                continue
            texts.append(str(row.fields["text"]))
            emotions.append(row.emotion)
            voices.append(str(row.fields.get("voice") or ""))
        features += mel_features(waves, n_mels)
    if not features:
        raise ManifestError(f"{manifest}: no usable clips ({dropped} unreadable)")
    return Corpus(tuple(features), tuple(texts), tuple(emotions), tuple(voices), dropped)


def mel_features(waves: Sequence, n_mels: int) -> list[torch.Tensor]:
    """Each waveform's log-mel over its own frames, equal to `log_mel` over the full window there."""
    # One buffer allocated before the STFT temporaries, viewed per clip: thousands of small tensors
    # left between freed temporaries fragment the heap (60 MB of features held 700 MB of RSS).
    sizes = [-(-len(w) // HOP_LENGTH) for w in waves]  # log_mel's valid frames: one per started hop
    packed = torch.empty(n_mels, sum(sizes), dtype=torch.float16)
    clips = list(torch.split(packed, sizes, dim=1))
    order = sorted(range(len(waves)), key=lambda i: sizes[i])
    for start in range(0, len(order), MEL_CHUNK):
        chunk = order[start : start + MEL_CHUNK]
        frames = max(sizes[i] for i in chunk) + MARGIN_FRAMES
        feats, counts = log_mel([waves[i] for i in chunk], n_mels, -(-frames // 100) * 100)
        if counts.tolist() != [sizes[i] for i in chunk]:
            raise RuntimeError(f"log_mel returned {counts.tolist()} frames, expected {[sizes[i] for i in chunk]}")
        for i, f in zip(chunk, feats):
            clips[i].copy_(f[:, : sizes[i]])
    return clips


# --- batches ------------------------------------------------------------------------------------


def length_batches(frames: Sequence[int], max_frames: int, rng: random.Random) -> list[list[int]]:
    """Indices in batches of similar length whose padded size (clips x longest) stays within
    `max_frames` (a longer clip goes alone); lengths jittered by 10 % so batches differ per epoch,
    batch order shuffled."""
    order = sorted(range(len(frames)), key=lambda i: frames[i] * rng.uniform(0.95, 1.05))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if current and max(longest, frames[i]) * (len(current) + 1) > max_frames:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, frames[i])
    batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_mels, frames_i) clips -> (N, n_mels, T) float32 zero-padded, and frames (N,)."""
    counts = torch.tensor([f.shape[1] for f in features])
    width = int(counts.max()) + int(counts.max()) % 2  # clip mode reads 2 * steps frames
    batch = torch.zeros(len(features), features[0].shape[0], width)
    for row, f in zip(batch, features):
        row[:, : f.shape[1]] = f
    return batch, counts


def perturb(features: torch.Tensor, warp: float, stretch: float, generator: torch.Generator) -> torch.Tensor:
    """One clip's (n_mels, frames) log-mel, float32, with formants scaled by a random factor in
    1 +- `warp` (another vocal tract) and tempo by one in 1 +- `stretch`."""
    alpha, beta = (1 + x * (2 * float(torch.rand(1, generator=generator)) - 1) for x in (warp, stretch))
    return stretch_time(warp_frequency(features.float(), alpha), beta)


def warp_frequency(features: torch.Tensor, alpha: float) -> torch.Tensor:
    """(n_mels, T) with the energy at frequency f moved to alpha * f (VTLP), read linearly between bins."""
    if alpha == 1:
        return features
    centres = _mel_centres(features.shape[0])
    position = torch.from_numpy(np.interp(centres / alpha, centres, np.arange(len(centres)))).float()
    low = position.floor().long().clamp(max=len(centres) - 2)
    weight = (position - low)[:, None]
    return features[low] * (1 - weight) + features[low + 1] * weight


def stretch_time(features: torch.Tensor, beta: float) -> torch.Tensor:
    """(n_mels, T) spoken beta times as fast: (n_mels, T / beta), linearly interpolated."""
    if beta == 1:
        return features
    frames = max(2, round(features.shape[1] / beta))
    return F.interpolate(features[None], size=frames, mode="linear", align_corners=True)[0]


@lru_cache(maxsize=4)
def _mel_centres(n_mels: int) -> np.ndarray:
    import librosa

    # Slaney mel scale, as in Whisper's filter bank; the outer two points are the band edges.
    return librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=SAMPLE_RATE / 2)[1:-1]


def spec_augment(batch: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Two frequency masks (<= 10 bins) and two time masks (<= 5 % of the clip, <= 0.4 s) per clip,
    filled with the clip's mean; so the model cannot lean on one band, i.e. one voice's formants."""
    batch = batch.clone()
    n_mels = batch.shape[1]
    for row, count in zip(batch, counts.tolist()):
        fill = row[:, :count].mean()
        for _ in range(2):
            width = int(torch.randint(0, 11, (1,), generator=generator))
            start = int(torch.randint(0, n_mels - width + 1, (1,), generator=generator))
            row[start : start + width, :count] = fill
            width = int(torch.randint(0, min(40, count // 20) + 1, (1,), generator=generator))
            start = int(torch.randint(0, count - width + 1, (1,), generator=generator))
            row[:, start : start + width] = fill
    return batch
