"""Stage 0, speech side: a tiny Whisper encoder pretrained with CTC ASR, and a speech-emotion classifier.

    python -m train.pretrain_speech asr --manifest train/manifest.jsonl --eval-manifest eval/manifest.jsonl --out runs/asr
    python -m train.pretrain_speech ser --manifest train/manifest.jsonl --eval-manifest eval/manifest.jsonl \\
        --init-encoder runs/asr --out runs/ser

The ASR model (`CtcRecognizer`) is the cascades' recogniser, and its encoder is the one BLSP-Emo
freezes; the emotion classifier (`WhisperEmotionClassifier`) is `cascade-ser`'s separate SER. Both
encode in clip mode (`encode_full_window=False`), so a 3 s clip costs 3 s of compute. Log-mel
features come from the same `log_mel` inference uses, once per clip, and stay in memory as float16
(only the clip's own frames); batches hold clips of similar length, `--batch-seconds` of audio
with padding counted, so little compute goes to padding. Each command writes the model folder
(`load_pretrained(CtcRecognizer | WhisperEmotionClassifier, DIR)`) and `DIR/metrics.json` with the
held-out scores (WER and CER; accuracy and macro-F1) and the measured times.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm
from transformers import WhisperConfig

from blsp_emo.asr import ALPHABET, CtcRecognizer, CtcRecognizerConfig
from blsp_emo.audio import FRAMES_PER_SECOND, SAMPLE_RATE, AudioError, load_audio, log_mel
from blsp_emo.checkpoint import load_pretrained
from blsp_emo.emotion import EMOTION_TO_ID, EMOTIONS
from blsp_emo.ser import WhisperEmotionClassifier

from .manifest import ManifestError, read_rows
from .schedule import warmup_decay

N_MELS = 80
POSITIONS = 1500  # Whisper's 30 s window; clip mode pays only for each clip's own length
BETAS, EPS = (0.9, 0.98), 1e-8  # beta2 0.98 as in Whisper's and most CTC recipes' AdamW


# --- options and sizes --------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSize:
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 512

    def __post_init__(self):
        if min(self.d_model, self.layers, self.heads, self.ffn) < 1 or self.d_model % self.heads:
            raise ValueError(f"encoder size {self}: all must be >= 1 and d_model divisible by heads; e.g. 128/4/4/512")

    def config(self) -> WhisperConfig:
        # Only the encoder is built, but WhisperConfig checks its token ids against vocab_size:
        # a 4-entry vocabulary with ids 0..3 keeps the saved config small and valid.
        return WhisperConfig(
            d_model=self.d_model, encoder_layers=self.layers, encoder_attention_heads=self.heads,
            encoder_ffn_dim=self.ffn, decoder_layers=1, decoder_attention_heads=self.heads,
            decoder_ffn_dim=self.ffn, num_mel_bins=N_MELS, max_source_positions=POSITIONS, vocab_size=4,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        )


@dataclass(frozen=True)
class FitOptions:
    epochs: int = 8
    batch_seconds: float = 60.0  # audio per batch, padding included
    lr: float = 2e-3  # peak of warmup + linear decay
    warmup: float = 0.1  # share of the steps spent warming up
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    spec_augment: bool = True  # two frequency and two time masks per clip (SpecAugment, LD-like)
    warp: float = 0.0  # formants scaled by up to 1 +- warp per clip (VTLP): new voices from the known ones
    stretch: float = 0.0  # tempo scaled by up to 1 +- stretch per clip
    seed: int = 0
    log_steps: int = 25

    def __post_init__(self):
        if self.epochs < 1 or self.batch_seconds <= 0 or self.lr <= 0 or not 0 <= self.warmup < 1:
            raise ValueError(f"{self}: need epochs >= 1, batch_seconds > 0, lr > 0 and 0 <= warmup < 1")


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

    @property
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
        for row in rows[start:start + READ_BLOCK]:
            try:
                waves.append(load_audio(row.fields["audio"]))
            except AudioError as e:
                warnings.warn(f"{row.where}: skipped ({e})")
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
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    out: list[torch.Tensor | None] = [None] * len(waves)
    for start in range(0, len(order), MEL_CHUNK):
        chunk = order[start:start + MEL_CHUNK]
        frames = max(len(waves[i]) for i in chunk) * FRAMES_PER_SECOND // SAMPLE_RATE + 1 + MARGIN_FRAMES
        feats, counts = log_mel([waves[i] for i in chunk], n_mels, -(-frames // 100) * 100)
        for i, f, n in zip(chunk, feats, counts.tolist()):
            out[i] = f[:, :n].to(torch.float16).clone()  # clone: keep the clip's frames, not the chunk
    return out


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
    """One clip's (n_mels, frames) log-mel with its frequency axis scaled by a random factor in
    1 +- `warp` (a shorter or longer vocal tract) and its time axis by one in 1 +- `stretch`."""
    alpha, beta = (1 + x * (2 * float(torch.rand(1, generator=generator)) - 1) for x in (warp, stretch))
    features = features.float()
    if alpha != 1:
        centres = _mel_centres(features.shape[0])
        # Bin k takes the energy that sat at centre_k / alpha: a linear read between two bins.
        position = torch.from_numpy(np.interp(centres / alpha, centres, np.arange(len(centres)))).float()
        low = position.floor().long().clamp(max=len(centres) - 2)
        weight = (position - low)[:, None]
        features = features[low] * (1 - weight) + features[low + 1] * weight
    if beta != 1:
        frames = max(2, round(features.shape[1] / beta))
        features = F.interpolate(features[None], size=frames, mode="linear", align_corners=True)[0]
    return features


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
            row[start:start + width, :count] = fill
            width = int(torch.randint(0, min(40, count // 20) + 1, (1,), generator=generator))
            start = int(torch.randint(0, count - width + 1, (1,), generator=generator))
            row[:, start:start + width] = fill
    return batch


# --- training -----------------------------------------------------------------------------------

BatchLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, list[int]], torch.Tensor]


@dataclass(frozen=True)
class FitReport:
    steps: int
    epochs: int
    seconds: float  # wall clock of the training loop
    cpu_seconds: float  # this process's CPU time: on a busy machine, what a free one would take per thread
    padding: float  # share of batch frames that were padding


def fit(
    model: torch.nn.Module, corpus: Corpus, loss_fn: BatchLoss, options: FitOptions, name: str,
    after_epoch: Callable[[int, torch.nn.Module], None] | None = None,
) -> FitReport:
    """AdamW with warmup + linear decay over `options.epochs` passes of length-bucketed batches;
    `after_epoch(epoch, model)` (e.g. a held-out score) runs after each pass, in eval mode."""
    accelerator = Accelerator()
    set_seed(options.seed)
    rng, generator = random.Random(options.seed), torch.Generator().manual_seed(options.seed)
    max_frames = int(options.batch_seconds * FRAMES_PER_SECOND)
    plan = [length_batches(corpus.frames, max_frames, rng) for _ in range(options.epochs)]
    total = sum(map(len, plan))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, betas=BETAS, eps=EPS, weight_decay=options.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = warmup_decay(optimizer, int(options.warmup * total), total, "linear")
    model.train()
    padded = sum(len(b) * max(corpus.frames[i] for i in b) for b in plan[0])
    padding = 1 - sum(corpus.frames) / padded
    tqdm.write(f"{name}: {total} steps, {options.epochs} epochs of {len(plan[0])} batches, padding {padding:.1%}")
    start, cpu, step, window = time.perf_counter(), time.process_time(), 0, []
    for epoch, batches in enumerate(plan):
        for batch in tqdm(batches, desc=f"{name} epoch {epoch + 1}", disable=None, leave=False):
            clips = [corpus.features[i] for i in batch]
            if options.warp or options.stretch:
                clips = [perturb(f, options.warp, options.stretch, generator) for f in clips]
            features, counts = collate(clips)
            if options.spec_augment:
                features = spec_augment(features, counts, generator)
            loss = loss_fn(model, features.to(accelerator.device), counts.to(accelerator.device), batch)
            accelerator.backward(loss)
            norm = accelerator.clip_grad_norm_(params, options.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step, window = step + 1, window + [float(loss.detach())]
            if step % options.log_steps == 0 or step == total:
                seconds = (time.perf_counter() - start) / step
                tqdm.write(f"{name} step {step}/{total} | epoch {epoch + 1} | loss {sum(window) / len(window):.4f} | "
                           f"lr {lr:.2e} | grad_norm {float(norm):.3f} | {seconds:.2f} s/step")
                window = []
        if after_epoch is not None:
            after_epoch(epoch + 1, accelerator.unwrap_model(model).eval())
            model.train()
    model = accelerator.unwrap_model(model).eval()
    return FitReport(total, options.epochs, round(time.perf_counter() - start, 1),
                     round(time.process_time() - cpu, 1), round(padding, 4))


@torch.inference_mode()
def predict(model: torch.nn.Module, corpus: Corpus, batch_seconds: float, decode: Callable) -> list:
    """`decode(model, features, counts)` over length-bucketed batches, returned in corpus order."""
    model.eval()
    out: list = [None] * len(corpus.features)
    device = next(model.parameters()).device
    for batch in length_batches(corpus.frames, int(batch_seconds * FRAMES_PER_SECOND), random.Random(0)):
        features, counts = collate([corpus.features[i] for i in batch])
        for i, result in zip(batch, decode(model, features.to(device), counts.to(device))):
            out[i] = result
    return out


# --- metrics ------------------------------------------------------------------------------------


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance: substitutions + deletions + insertions, each costing 1."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def error_rate(references: Sequence[str], hypotheses: Sequence[str], unit: str = "word") -> float:
    """Corpus WER (unit "word") or CER (unit "char", spaces included): edits / reference length."""
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    split = str.split if unit == "word" else list
    pairs = [(split(r), split(h)) for r, h in zip(references, hypotheses, strict=True)]
    length = sum(len(r) for r, _ in pairs)
    if length == 0:
        raise ValueError("the references are empty; WER is undefined")
    return sum(edit_distance(r, h) for r, h in pairs) / length


def normalize(text: str, alphabet: str = ALPHABET) -> str:
    """What a CTC model over `alphabet` can write: lower case, other characters dropped, single spaces."""
    return " ".join("".join(c for c in text.lower() if c in alphabet).split())


def classification_scores(gold: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1 (over labels present in gold or predictions), per-label recall, confusion."""
    confusion = [[0] * len(labels) for _ in labels]  # [gold][predicted]
    for g, p in zip(gold, predicted, strict=True):
        confusion[g][p] += 1
    f1s, recall = [], {}
    for k, label in enumerate(labels):
        tp, gold_k, pred_k = confusion[k][k], sum(confusion[k]), sum(row[k] for row in confusion)
        if gold_k or pred_k:
            f1s.append(2 * tp / (gold_k + pred_k))
        recall[label] = round(tp / gold_k, 4) if gold_k else None
    return {
        "accuracy": round(sum(confusion[k][k] for k in range(len(labels))) / max(1, len(gold)), 4),
        "macro_f1": round(sum(f1s) / max(1, len(f1s)), 4),
        "recall": recall,
        "confusion": {label: dict(zip(labels, row)) for label, row in zip(labels, confusion)},
    }


# --- the two models -----------------------------------------------------------------------------


def train_asr(corpus: Corpus, size: EncoderSize, options: FitOptions) -> tuple[CtcRecognizer, FitReport]:
    model = CtcRecognizer(CtcRecognizerConfig(size.config(), encode_full_window=False))

    def loss(model, features, counts, batch):
        return model.ctc_loss(features, counts, [corpus.texts[i] for i in batch])

    return model, fit(model, corpus, loss, options, "asr")


def evaluate_asr(model: CtcRecognizer, corpus: Corpus, batch_seconds: float = 60.0) -> dict:
    """Corpus WER and CER of greedy CTC against the normalised manifest texts, plus a few examples."""
    hypotheses = predict(model, corpus, batch_seconds, lambda m, f, c: m.greedy_decode(*m(f, c)))
    references = [normalize(text, model.config.alphabet) for text in corpus.texts]
    examples = [{"reference": r, "hypothesis": h} for r, h in list(zip(references, hypotheses))[:: max(1, len(references) // 5)]]
    by_voice: dict[str, tuple[list[str], list[str]]] = {}
    for voice, r, h in zip(corpus.voices, references, hypotheses):
        by_voice.setdefault(voice, ([], []))[0].append(r)
        by_voice[voice][1].append(h)
    return {
        "wer": round(error_rate(references, hypotheses, "word"), 4),
        "cer": round(error_rate(references, hypotheses, "char"), 4),
        "clips": len(references),
        "wer_by_voice": {v: round(error_rate(*pair), 4) for v, pair in sorted(by_voice.items())},
        "examples": examples[:5],
    }


def build_ser(size: EncoderSize, init_encoder: str | None = None, freeze_encoder: bool = False) -> WhisperEmotionClassifier:
    """A fresh classifier of `size`, or one whose encoder starts as (a copy of) an ASR model's."""
    if init_encoder is None:
        model = WhisperEmotionClassifier.build(size.config(), EMOTIONS, encode_full_window=False)
    else:
        asr = load_pretrained(CtcRecognizer, Path(init_encoder))
        model = WhisperEmotionClassifier.build(asr.config.encoder_config, EMOTIONS, encode_full_window=False)
        model.encoder.load_state_dict(asr.encoder.state_dict())
    model.encoder.requires_grad_(not freeze_encoder)
    return model


def train_ser(model: WhisperEmotionClassifier, corpus: Corpus, options: FitOptions) -> FitReport:
    labels = emotion_ids(corpus)

    def loss(model, features, counts, batch):
        return F.cross_entropy(model(features, counts), labels[batch].to(features.device))

    return fit(model, corpus, loss, options, "ser")


def emotion_ids(corpus: Corpus) -> torch.Tensor:
    missing = sum(1 for e in corpus.emotions if e not in EMOTION_TO_ID)
    if missing:
        raise ManifestError(f"{missing} of {len(corpus.emotions)} rows have no emotion label; SER needs one per row")
    return torch.tensor([EMOTION_TO_ID[e] for e in corpus.emotions])


def evaluate_ser(model: WhisperEmotionClassifier, corpus: Corpus, batch_seconds: float = 60.0) -> dict:
    """Accuracy, macro-F1, recall per emotion, the confusion matrix and accuracy per voice."""
    predicted = predict(model, corpus, batch_seconds, lambda m, f, c: m(f, c).argmax(-1).tolist())
    gold = emotion_ids(corpus).tolist()
    by_voice: dict[str, list[bool]] = {}
    for voice, g, p in zip(corpus.voices, gold, predicted):
        by_voice.setdefault(voice, []).append(g == p)
    per_voice = {v: round(sum(hits) / len(hits), 4) for v, hits in sorted(by_voice.items())}
    return {**classification_scores(gold, predicted, EMOTIONS), "clips": len(gold), "accuracy_by_voice": per_voice}


# --- command line -------------------------------------------------------------------------------

ASR_SIZE, ASR_FIT = EncoderSize(), FitOptions()
SER_SIZE, SER_FIT = EncoderSize(d_model=64, layers=2, heads=4, ffn=256), FitOptions(epochs=4, lr=1e-3)


def add_asr_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr`: CTC pretraining of the speech encoder."""
    _add_common(parser, ASR_FIT)
    _add_size(parser, ASR_SIZE)


def add_ser_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ser`: the separate speech-emotion classifier of `cascade-ser`."""
    _add_common(parser, SER_FIT)
    _add_size(parser, SER_SIZE, note=" (ignored with --init-encoder)")
    parser.add_argument("--init-encoder", metavar="ASR_DIR", help="start the encoder from this ASR model (takes its size)")
    parser.add_argument("--freeze-encoder", action="store_true",
                        help="train only the head: a linear probe of the encoder's pooled states")


def _add_common(parser: argparse.ArgumentParser, fit: FitOptions) -> None:
    add = parser.add_argument
    add("--manifest", required=True, help="training clips: JSON lines with audio, text (and emotion for ser)")
    add("--eval-manifest", help="held-out clips scored into DIR/metrics.json (reserved voices, eval sentences)")
    add("--out", required=True, metavar="DIR", help="model folder to write (config.json, model.safetensors, metrics.json)")
    add("--epochs", type=int, default=fit.epochs)
    add("--batch-seconds", type=float, default=fit.batch_seconds, help="audio per batch, padding included")
    add("--lr", type=float, default=fit.lr, help="peak learning rate (warmup, then linear decay)")
    add("--no-spec-augment", dest="spec_augment", action="store_false", help="no time/frequency masking")
    add("--seed", type=int, default=fit.seed)
    add("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def _add_size(parser: argparse.ArgumentParser, size: EncoderSize, note: str = "") -> None:
    group = parser.add_argument_group("encoder size" + note)
    for name, value in asdict(size).items():
        group.add_argument(f"--{name.replace('_', '-')}", type=int, default=value, help=f"default {value}")


def _setup(args: argparse.Namespace) -> tuple[FitOptions, Path]:
    fit = FitOptions(epochs=args.epochs, batch_seconds=args.batch_seconds, lr=args.lr,
                     spec_augment=args.spec_augment, seed=args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return fit, out


def _corpora(args: argparse.Namespace) -> tuple[Corpus, Corpus | None, float]:
    start = time.perf_counter()
    train = load_corpus(args.manifest)
    held_out = load_corpus(args.eval_manifest) if args.eval_manifest else None
    seconds = round(time.perf_counter() - start, 1)
    tqdm.write(f"features: {len(train.features)} training clips ({train.hours:.2f} h) in {seconds} s")
    return train, held_out, seconds


def run_asr(args: argparse.Namespace) -> int:
    fit_options, out = _setup(args)
    size = EncoderSize(args.d_model, args.layers, args.heads, args.ffn)
    train, held_out, feature_seconds = _corpora(args)
    model, report = train_asr(train, size, fit_options)
    model.save_pretrained(str(out))
    scores = evaluate_asr(model, held_out) if held_out is not None else None
    _write_metrics(out, "asr", args, train, feature_seconds, report, model, {"size": asdict(size), "eval": scores})
    return 0


def run_ser(args: argparse.Namespace) -> int:
    fit_options, out = _setup(args)
    size = EncoderSize(args.d_model, args.layers, args.heads, args.ffn)
    model = build_ser(size, args.init_encoder, args.freeze_encoder)  # before features: fail fast on a bad folder
    train, held_out, feature_seconds = _corpora(args)
    report = train_ser(model, train, fit_options)
    model.save_pretrained(str(out))
    scores = evaluate_ser(model, held_out) if held_out is not None else None
    extra = {"size": asdict(_size_of(model)), "init_encoder": args.init_encoder,
             "freeze_encoder": args.freeze_encoder, "eval": scores}
    _write_metrics(out, "ser", args, train, feature_seconds, report, model, extra)
    return 0


def _size_of(model: WhisperEmotionClassifier) -> EncoderSize:
    c = model.config.encoder_config
    return EncoderSize(c.d_model, c.encoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim)


def _write_metrics(out: Path, command: str, args, train: Corpus, feature_seconds: float, report: FitReport, model, extra: dict) -> None:
    metrics = {
        "command": command, "manifest": args.manifest, "eval_manifest": args.eval_manifest,
        "train_clips": len(train.features), "train_hours": round(train.hours, 3), "dropped": train.dropped,
        "params": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
        "feature_seconds": feature_seconds, "fit": asdict(report),
        "options": {k: getattr(args, k) for k in ("epochs", "batch_seconds", "lr", "spec_augment", "seed")},
        "seconds_per_epoch": round(report.seconds / report.epochs, 1),
        "cpu_seconds_per_epoch": round(report.cpu_seconds / report.epochs, 1), **extra,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    scores = extra.get("eval") or {}
    summary = {k: scores[k] for k in ("wer", "cer", "accuracy", "macro_f1") if k in scores}
    print(json.dumps({"out": str(out), **summary, "seconds_per_epoch": metrics["seconds_per_epoch"]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.pretrain_speech", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_asr_arguments(sub.add_parser("asr", help="CTC ASR: the speech encoder and the cascades' recogniser"))
    add_ser_arguments(sub.add_parser("ser", help="the separate speech-emotion classifier of cascade-ser"))
    args = parser.parse_args(argv)
    try:
        return run_asr(args) if args.command == "asr" else run_ser(args)
    except (ManifestError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
