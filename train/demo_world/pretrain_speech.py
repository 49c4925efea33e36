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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm
from transformers import WhisperConfig

from blsp_emo.audio import FRAMES_PER_SECOND, HOP_LENGTH, SAMPLE_RATE, AudioError, load_audio, log_mel
from blsp_emo.emotion import EMOTION_TO_ID, EMOTIONS
from blsp_emo.metrics import error_rate, label_scores
from blsp_emo.model.checkpoint import load_pretrained
from blsp_emo.systems.asr import ALPHABET, CtcRecognizer, CtcRecognizerConfig
from blsp_emo.systems.ctc_decoding import WORD_LM_FILE, LexiconDecoder, WordBigramLM
from blsp_emo.systems.ser import WhisperEmotionClassifier
from train.manifest import ManifestError, read_rows
from train.schedule import warmup_decay

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
            d_model=self.d_model,
            encoder_layers=self.layers,
            encoder_attention_heads=self.heads,
            encoder_ffn_dim=self.ffn,
            decoder_layers=1,
            decoder_attention_heads=self.heads,
            decoder_ffn_dim=self.ffn,
            num_mel_bins=N_MELS,
            max_source_positions=POSITIONS,
            vocab_size=4,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=3,
        )


@dataclass(frozen=True)
class FitOptions:
    epochs: int = 4
    batch_seconds: float = 30.0  # audio per batch, padding included
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
    model: torch.nn.Module,
    corpus: Corpus,
    loss_fn: BatchLoss,
    options: FitOptions,
    name: str,
    after_epoch: Callable[[int, torch.nn.Module], None] | None = None,
) -> FitReport:
    """AdamW with warmup + linear decay over `options.epochs` passes of length-bucketed batches;
    `after_epoch(epoch, model)` (e.g. a held-out score) runs after each pass, in eval mode."""
    accelerator = Accelerator()
    set_seed(options.seed)
    rng, generator = random.Random(options.seed), torch.Generator().manual_seed(options.seed)
    plan = [
        length_batches(corpus.frames, int(options.batch_seconds * FRAMES_PER_SECOND), rng)
        for _ in range(options.epochs)
    ]
    total = sum(map(len, plan))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, betas=BETAS, eps=EPS, weight_decay=options.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = warmup_decay(optimizer, int(options.warmup * total), total, "linear")
    padding = 1 - sum(corpus.frames) / sum(len(b) * max(corpus.frames[i] for i in b) for b in plan[0])
    tqdm.write(f"{name}: {total} steps, {options.epochs} epochs of {len(plan[0])} batches, padding {padding:.1%}")
    start, cpu, step, losses = time.perf_counter(), time.process_time(), 0, []
    model.train()
    for epoch, batches in enumerate(plan):
        for batch in tqdm(batches, desc=f"{name} epoch {epoch + 1}", disable=None, leave=False):
            features, counts = training_batch(corpus, batch, options, generator)
            loss = loss_fn(model, features.to(accelerator.device), counts.to(accelerator.device), batch)
            accelerator.backward(loss)
            norm = accelerator.clip_grad_norm_(params, options.max_grad_norm)
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step, losses = step + 1, losses + [float(loss.detach())]
            if step % options.log_steps == 0 or step == total:
                tqdm.write(
                    f"{name} step {step}/{total} | epoch {epoch + 1} | loss {sum(losses) / len(losses):.4f} | "
                    f"lr {lr:.2e} | grad_norm {float(norm):.3f} | {(time.perf_counter() - start) / step:.2f} s/step"
                )
                losses = []
        if after_epoch is not None:
            after_epoch(epoch + 1, accelerator.unwrap_model(model).eval())
            model.train()
    accelerator.unwrap_model(model).eval()
    return FitReport(
        total,
        options.epochs,
        round(time.perf_counter() - start, 1),
        round(time.process_time() - cpu, 1),
        round(padding, 4),
    )


def training_batch(corpus: Corpus, batch: list[int], options: FitOptions, generator: torch.Generator):
    """The clips of `batch`, perturbed, padded and masked as `options` say: (N, n_mels, T), (N,)."""
    clips = [corpus.features[i] for i in batch]
    if options.warp or options.stretch:
        clips = [perturb(f, options.warp, options.stretch, generator) for f in clips]
    features, counts = collate(clips)
    return (spec_augment(features, counts, generator) if options.spec_augment else features), counts


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


def normalize(text: str, alphabet: str = ALPHABET) -> str:
    """What a CTC model over `alphabet` can write: lower case, other characters dropped, single spaces."""
    return " ".join("".join(c for c in text.lower() if c in alphabet).split())


# --- the two models -----------------------------------------------------------------------------


def train_asr(corpus: Corpus, size: EncoderSize, options: FitOptions) -> tuple[CtcRecognizer, FitReport]:
    model = CtcRecognizer(CtcRecognizerConfig(size.config(), encode_full_window=False))

    def loss(model, features, counts, batch):
        return model.ctc_loss(features, counts, [corpus.texts[i] for i in batch])

    return model, fit(model, corpus, loss, options, "asr")


def evaluate_asr(
    model: CtcRecognizer, corpus: Corpus, batch_seconds: float = 60.0, decoder: LexiconDecoder | None = None
) -> dict:
    """Corpus WER and CER against the normalised manifest texts, plus a few examples: of `decoder`'s
    transcripts when given (with greedy CTC's WER beside them), else of greedy CTC's."""
    logits = predict(model, corpus, batch_seconds, _clip_log_probs)
    greedy = [model.greedy_decode(torch.from_numpy(x)[None], torch.tensor([len(x)]))[0] for x in logits]
    hypotheses = [decoder.decode(x) for x in logits] if decoder is not None else greedy
    references = [normalize(text, model.config.alphabet) for text in corpus.texts]
    pairs = list(zip(references, hypotheses))
    return {
        "wer": round(error_rate(references, hypotheses, "word"), 4),
        "cer": round(error_rate(references, hypotheses, "char"), 4),
        "decoding": "lexicon + word bigram LM" if decoder is not None else "greedy",
        "greedy_wer": round(error_rate(references, greedy, "word"), 4),
        "clips": len(references),
        "wer_by_voice": _by_voice(corpus, pairs, lambda some: error_rate(*zip(*some))),
        "examples": [{"reference": r, "hypothesis": h} for r, h in pairs[:: max(1, len(pairs) // 5)][:5]],
    }


def _clip_log_probs(model: CtcRecognizer, features: torch.Tensor, counts: torch.Tensor) -> list[np.ndarray]:
    logits, lengths = model(features, counts)
    return [row[:n].float().log_softmax(-1).numpy() for row, n in zip(logits, lengths.tolist())]


def write_word_lm(model: CtcRecognizer, corpus: Corpus, out: Path) -> LexiconDecoder:
    """The word LM of `corpus`'s transcripts, saved in `out` beside the model, and its decoder."""
    WordBigramLM.from_texts(normalize(t, model.config.alphabet) for t in corpus.texts).save(out / WORD_LM_FILE)
    return LexiconDecoder.load(out, model.config.alphabet)


def _by_voice(corpus: Corpus, items: list, score: Callable[[list], float]) -> dict[str, float]:
    """`score` of each voice's share of `items` (one item per clip, in corpus order)."""
    groups: dict[str, list] = {}
    for voice, item in zip(corpus.voices, items, strict=True):
        groups.setdefault(voice, []).append(item)
    return {voice: round(score(some), 4) for voice, some in sorted(groups.items())}


def build_ser(
    size: EncoderSize, init_encoder: str | None = None, freeze_encoder: bool = False
) -> WhisperEmotionClassifier:
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


def score_classifier(model: WhisperEmotionClassifier, corpus: Corpus, batch_seconds: float = 60.0) -> dict:
    """Accuracy, macro-F1, recall per emotion, the confusion matrix and accuracy per voice."""
    predicted = predict(model, corpus, batch_seconds, lambda m, f, c: m(f, c).argmax(-1).tolist())
    gold = emotion_ids(corpus).tolist()
    hits = [g == p for g, p in zip(gold, predicted)]
    per_voice = _by_voice(corpus, hits, lambda some: sum(some) / len(some))
    scores = label_scores([EMOTIONS[g] for g in gold], [EMOTIONS[p] for p in predicted], EMOTIONS)
    return {
        "accuracy": round(scores.accuracy, 4),
        "macro_f1": round(scores.macro_f1, 4),
        "recall": {label: None if r is None else round(r, 4) for label, r in scores.recall().items()},
        "confusion": scores.confusion,
        "clips": len(gold),
        "accuracy_by_voice": per_voice,
    }


# --- command line -------------------------------------------------------------------------------

# Chosen by measurement on 7040 clips (5.9 h) of 12 training voices, scored on 528 clips of the six
# reserved voices (CPU seconds on one free core; features ~25 s more): ASR 4 epochs ~690 s; SER
# from scratch 5 epochs ~260 s, fine-tuned from the ASR encoder 1 epoch ~175 s, probe 4 epochs ~215 s.
ASR_SIZE = EncoderSize(d_model=128, layers=4, heads=4, ffn=512)
ASR_FIT = FitOptions(epochs=4, batch_seconds=30.0, lr=4e-3, warp=0.1, stretch=0.1)
SER_SIZE = EncoderSize(d_model=64, layers=2, heads=4, ffn=256)
# SER recipes by how the encoder starts. No tempo stretch: speaking rate is an emotion cue.
SER_FIT = {
    "scratch": FitOptions(epochs=5, batch_seconds=30.0, lr=2e-3, warp=0.1),
    # --init-encoder. On the demo corpus (3520 clips, 626 voices) 3 epochs with VTLP scored 77.7 % on
    # the held-out voices, 1 epoch without VTLP 62.5 %.
    "fine-tune": FitOptions(epochs=3, batch_seconds=30.0, lr=1e-3, warp=0.1),
    "probe": FitOptions(epochs=4, batch_seconds=30.0, lr=3e-3),  # --init-encoder --freeze-encoder
}
TUNED = ("epochs", "batch_seconds", "lr", "warp", "stretch")  # options whose default depends on the recipe


def add_asr_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `asr`: CTC pretraining of the speech encoder."""
    _add_common(parser, {"": ASR_FIT})
    _add_size(parser, ASR_SIZE)


def add_ser_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ser`: the separate speech-emotion classifier of `cascade-ser`."""
    _add_common(parser, SER_FIT)
    _add_size(parser, SER_SIZE)
    parser.add_argument(
        "--init-encoder", metavar="ASR_DIR", help="start the encoder from this ASR model (and its size)"
    )
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="with --init-encoder, train only the head: a linear probe of the mean-pooled states",
    )


def _add_common(parser: argparse.ArgumentParser, recipes: dict[str, FitOptions]) -> None:
    add = parser.add_argument
    add("--manifest", required=True, help="training clips: JSON lines with audio, text (and emotion for ser)")
    add("--eval-manifest", help="held-out clips scored into DIR/metrics.json (reserved voices, eval sentences)")
    add(
        "--out",
        required=True,
        metavar="DIR",
        help="model folder to write (config.json, model.safetensors, metrics.json)",
    )
    helps = {
        "batch_seconds": "audio per batch, padding included",
        "lr": "peak of warmup + linear decay",
        "warp": "formants scaled by up to 1 +- WARP per clip",
        "stretch": "tempo scaled by up to 1 +- STRETCH per clip",
    }
    for name in TUNED:
        defaults = ", ".join(
            f"{mode} {getattr(fit, name):g}" if mode else f"{getattr(fit, name):g}" for mode, fit in recipes.items()
        )
        kind = int if name == "epochs" else float
        add(f"--{name.replace('_', '-')}", type=kind, help=f"{helps.get(name, '')} (default: {defaults})".lstrip())
    add("--no-spec-augment", dest="spec_augment", action="store_false", help="no time/frequency masks")
    add("--seed", type=int, default=0)
    add("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 when other jobs share the cores)")


def _add_size(parser: argparse.ArgumentParser, size: EncoderSize) -> None:
    group = parser.add_argument_group("encoder size")
    for name, value in asdict(size).items():
        group.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {value}")


def _size(args: argparse.Namespace, default: EncoderSize) -> EncoderSize:
    given = {name: getattr(args, name) for name in asdict(default) if getattr(args, name) is not None}
    if given and getattr(args, "init_encoder", None):
        raise ValueError(f"{sorted(given)} size a new encoder; --init-encoder takes the ASR model's size, so drop them")
    return EncoderSize(**{**asdict(default), **given})


def _setup(args: argparse.Namespace, recipe: FitOptions) -> tuple[FitOptions, Path]:
    given = {name: getattr(args, name) for name in TUNED if getattr(args, name) is not None}
    fit = replace(recipe, **given, spec_augment=args.spec_augment, seed=args.seed)
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
    options, out = _setup(args, ASR_FIT)
    size = _size(args, ASR_SIZE)
    train, held_out, feature_seconds = _corpora(args)
    model, report = train_asr(train, size, options)
    model.save_pretrained(str(out))
    decoder = write_word_lm(model, train, out)
    scores = evaluate_asr(model, held_out, decoder=decoder) if held_out is not None else None
    _write_metrics(
        out, "asr", args, options, train, feature_seconds, report, model, {"size": asdict(size), "eval": scores}
    )
    return 0


def run_ser(args: argparse.Namespace) -> int:
    if args.freeze_encoder and not args.init_encoder:
        raise ValueError("--freeze-encoder probes a trained encoder: pass --init-encoder ASR_DIR too")
    mode = "scratch" if not args.init_encoder else "probe" if args.freeze_encoder else "fine-tune"
    options, out = _setup(args, SER_FIT[mode])
    model = build_ser(_size(args, SER_SIZE), args.init_encoder, args.freeze_encoder)  # before features: fail fast
    train, held_out, feature_seconds = _corpora(args)
    report = train_ser(model, train, options)
    model.save_pretrained(str(out))
    scores = score_classifier(model, held_out) if held_out is not None else None
    c = model.config.encoder_config
    size = EncoderSize(c.d_model, c.encoder_layers, c.encoder_attention_heads, c.encoder_ffn_dim)
    extra = {"size": asdict(size), "recipe": mode, "init_encoder": args.init_encoder, "eval": scores}
    _write_metrics(out, "ser", args, options, train, feature_seconds, report, model, extra)
    return 0


def _write_metrics(
    out: Path,
    command: str,
    args,
    options: FitOptions,
    train: Corpus,
    feature_seconds: float,
    report: FitReport,
    model: torch.nn.Module,
    extra: dict,
) -> None:
    metrics = {
        "command": command,
        "manifest": args.manifest,
        "eval_manifest": args.eval_manifest,
        "train_clips": len(train.features),
        "train_hours": round(train.hours, 3),
        "dropped": train.dropped,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "options": asdict(options),
        "feature_seconds": feature_seconds,
        "fit": asdict(report),
        "seconds_per_epoch": round(report.seconds / report.epochs, 1),
        "cpu_seconds_per_epoch": round(report.cpu_seconds / report.epochs, 1),
        **extra,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    scores = extra.get("eval") or {}
    summary = {k: scores[k] for k in ("wer", "cer", "accuracy", "macro_f1") if k in scores}
    print(json.dumps({"out": str(out), **summary, "seconds_per_epoch": metrics["seconds_per_epoch"]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.pretrain_speech",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
