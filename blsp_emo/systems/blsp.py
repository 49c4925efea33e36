"""End-to-end systems: BLSP-Emo (stage 2) and the semantic-only BLSP (stage 1) share this class."""

from __future__ import annotations

from typing import Iterator

import torch

from ..emotion import scores_by_label
from ..generation import GenerationOptions
from ..model import BlspEmoModel
from ..processor import build_prompt
from ..prompts import Turn, chat_pieces
from ..tokenizer import ChatTokenizer
from .base import Heard, SpokenDialogueSystem


class BlspSystem(SpokenDialogueSystem):
    """Speech in, reply out, one model; previous speech turns are heard again from their audio.

    Args:
        perceives_emotion: report the emotion head's scores (only a stage-2 model trained it).
    """

    def __init__(
        self,
        name: str,
        description: str,
        model: BlspEmoModel,
        tokenizer: ChatTokenizer,
        system_prompt: str,
        perceives_emotion: bool,
    ):
        self.name, self.description = name, description
        self.model, self.tokenizer = model, tokenizer
        self.system_prompt = system_prompt
        self.perceives_emotion = perceives_emotion
        self.emotion_source = "emotion head" if perceives_emotion else None
        self.window_seconds = model.config.window_seconds

    @torch.inference_mode()
    def _answer(
        self, turn: Turn, history: tuple[Turn, ...], options: GenerationOptions, seed: int
    ) -> tuple[Heard, Iterator[int]]:
        turns = (*history, turn)
        clips = [t.audio for t in turns if t.role == "user" and t.audio is not None]
        prompt = build_prompt(self.tokenizer, chat_pieces(self.system_prompt, turns), clips, self.model.config)
        speech = None
        heard = Heard()
        if clips:
            speech = self.model.encode_speech(prompt.input_features, prompt.frame_counts)
            if self.perceives_emotion and turn.audio is not None:
                probs = self.model.emotion_logits(speech)[-1].softmax(-1)  # the current clip is the last
                heard = Heard(scores_by_label(probs, self.model.config.emotions))
        tokens = self.model.generate_stream(prompt, speech, options, self.tokenizer.stop_ids, seed)
        return heard, tokens
