"""End-to-end systems: BLSP-Emo (stage 2) and the semantic-only BLSP (stage 1) share this class."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from blsp_emo.calibration import IDENTITY, Calibration
from blsp_emo.decoding.generation import Decoder, GenerationOptions
from blsp_emo.decoding.prefix_cache import PrefixCache, TokenSequence, remember
from blsp_emo.emotion import scores_by_label
from blsp_emo.model.model import BlspEmoModel, SpeechEmbeddings, SpeechPrompt
from blsp_emo.model.processor import clip_features, frame_counts, speech_lengths
from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.prompts import Turn, chat_pieces
from blsp_emo.systems.base import Heard, LocalSystem


class BlspSystem(LocalSystem):
    """Speech in, reply out, one model; previous speech turns are heard again from their audio
    (or from the keys and values they left in the prefix cache).

    Args:
        perceives_emotion: report the emotion head's scores (only a stage-2 model trained it).
        prefix_cache: reuse keys and values of earlier turns (and of other visitors' identical
            prefixes, such as the system prompt) instead of re-encoding them.
        calibration: the emotion head's temperature (`calibration.json` beside the model, read by
            `load_system`); the default, T = 1, shows the head's softmax as it is.
    """

    def __init__(
        self,
        name: str,
        description: str,
        model: BlspEmoModel,
        tokenizer: ChatTokenizer,
        system_prompt: str,
        perceives_emotion: bool,
        prefix_cache: PrefixCache | None = None,
        decoder: Decoder | None = None,
        calibration: Calibration = IDENTITY,
    ):
        self.name, self.description = name, description
        self.model, self.tokenizer = model, tokenizer
        self.system_prompt = system_prompt
        self.perceives_emotion = perceives_emotion
        self.emotion_source = "emotion head" if perceives_emotion else None
        self.window_seconds = model.config.window_seconds
        self.prefix_cache = prefix_cache  # None: every turn re-encodes the whole history
        self.decoder = decoder  # None: `decode` in the caller's thread
        self.calibration = calibration

    def context_tokens(self) -> int | None:
        return self.model.llm.config.max_position_embeddings

    @torch.inference_mode()
    def _answer(
        self, turn: Turn, history: tuple[Turn, ...], options: GenerationOptions, seed: int
    ) -> tuple[Heard, Iterator[int]]:
        config = self.model.config

        def encode(turns: tuple[Turn, ...]):
            clips = _clips(turns)
            return self.tokenizer.encode_pieces(
                chat_pieces(self.system_prompt, turns), speech_lengths(frame_counts(clips, config), config)
            )

        history, encoded = self._fit_prompt(turn, history, options, encode)
        clips = _clips((*history, turn))
        sequence = TokenSequence.of(encoded.input_ids, encoded.speech_mask, clips)
        reused, cache = self.prefix_cache.lookup(sequence, self.model.llm.config) if self.prefix_cache else (0, None)
        # Encode only clips not wholly in the reused prefix, and the current one for the emotion head.
        needed = [k for k, (_, end) in enumerate(sequence.spans) if end > reused]
        if self.perceives_emotion and turn.audio is not None and len(clips) - 1 not in needed:
            needed.append(len(clips) - 1)
        speech, heard = None, Heard()
        if needed:
            features, counts = clip_features([clips[k] for k in needed], config)
            speech = self.model.encode_speech(features, counts)
            if self.perceives_emotion and turn.audio is not None:
                # The one place the shown probabilities are made: the head's logits at the fitted temperature.
                logits = self.model.emotion_logits(speech)[-1]  # the current clip is the last
                probs = (logits / self.calibration.temperature).softmax(-1)
                heard = Heard(scores_by_label(probs, config.emotions))
        prompt = SpeechPrompt(torch.tensor([encoded.input_ids[reused:]]), torch.tensor([encoded.speech_mask[reused:]]))
        rows = _speech_after(speech, needed, sequence.spans, reused)
        return heard, remember(
            self.prefix_cache,
            sequence,
            lambda on_done: self.model.generate_stream(
                prompt, rows, options, self.tokenizer.stop_ids, seed, cache, on_done, self.decoder
            ),
        )


def _clips(turns: tuple[Turn, ...]) -> list:
    return [t.audio for t in turns if t.role == "user" and t.audio is not None]


def _speech_after(
    speech: SpeechEmbeddings | None, clips: list[int], spans: tuple[tuple[int, int], ...], start: int
) -> SpeechEmbeddings | None:
    """The embeddings of the speech positions from `start` on, as one row (clip k of `clips` is row k of `speech`)."""
    parts = [
        speech.embeds[i, max(start - spans[k][0], 0) : spans[k][1] - spans[k][0]]
        for i, k in enumerate(clips)
        if spans[k][1] > start
    ]
    if not parts:
        return None
    rows = torch.cat(parts)
    return SpeechEmbeddings(rows[None], torch.tensor([rows.shape[0]], device=rows.device))
