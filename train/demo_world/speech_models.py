"""The two stage-0 speech models (`pretrain_speech.py`): CTC ASR and the emotion classifier.

Each has its size, its training (a loss for `speech_fit.fit`) and its held-out evaluation: WER and
CER for the recogniser (`CtcRecognizer`, whose encoder BLSP-Emo freezes), accuracy and macro-F1
for `cascade-ser`'s separate classifier (`WhisperEmotionClassifier`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperConfig

from blsp_emo.emotion import EMOTION_TO_ID, EMOTIONS
from blsp_emo.metrics import error_rate, label_scores
from blsp_emo.model.checkpoint import load_pretrained
from blsp_emo.systems.asr import ALPHABET, CtcRecognizer, CtcRecognizerConfig
from blsp_emo.systems.ctc_decoding import WORD_LM_FILE, LexiconDecoder, WordBigramLM
from blsp_emo.systems.ser import WhisperEmotionClassifier
from train.demo_world.speech_corpus import N_MELS, Corpus
from train.demo_world.speech_fit import FitOptions, FitReport, fit, predict
from train.manifest import ManifestError

POSITIONS = 1500  # Whisper's 30 s window; clip mode pays only for each clip's own length


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
    size: EncoderSize, init_encoder: str | None = None, freeze_encoder: bool = False, tune_layers: int | None = None
) -> WhisperEmotionClassifier:
    """A fresh classifier of `size`, or one whose encoder starts as (a copy of) an ASR model's."""
    if init_encoder is None:
        model = WhisperEmotionClassifier.build(size.config(), EMOTIONS, encode_full_window=False)
    else:
        encoder = _pretrained_encoder(Path(init_encoder))
        model = WhisperEmotionClassifier.build(encoder.config, EMOTIONS, encode_full_window=False)
        model.encoder.load_state_dict(encoder.state_dict())
    model.encoder.requires_grad_(not freeze_encoder)
    if tune_layers is not None and not freeze_encoder:
        # Only the top layers (and the final norm) move: what a pretrained encoder's lower layers
        # know of speech stays, and a bundle stores only what changed.
        layers = model.encoder.layers
        if not 0 <= tune_layers <= len(layers):
            raise ValueError(f"tune_layers must be in 0..{len(layers)} (the encoder's layers), got {tune_layers}")
        model.encoder.requires_grad_(False)
        for layer in layers[len(layers) - tune_layers :]:
            layer.requires_grad_(True)
        model.encoder.layer_norm.requires_grad_(True)
    return model


def _pretrained_encoder(folder: Path):
    """The encoder of a CTC ASR model (the scratch world) or of a Whisper base (`blsp_emo.bases`)."""
    import json

    if json.loads((folder / "config.json").read_text()).get("model_type") == "whisper":
        from transformers import WhisperForConditionalGeneration

        return WhisperForConditionalGeneration.from_pretrained(str(folder)).model.encoder
    return load_pretrained(CtcRecognizer, folder).encoder


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
