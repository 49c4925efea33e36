"""Pipelines a practitioner would build instead: ASR -> text LLM, optionally with a separate SER.

`cascade` cannot hear tone: its LLM reads only the transcript. `cascade-ser` adds a speech-emotion
classifier whose label for the turn being answered reaches the LLM as words in the system prompt.
Both reuse the BLSP-Emo model's LLM, whose text-only use is exactly the base LLM (the audio-scoped
LoRA never touches text).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from blsp_emo.decoding.generation import Decoder, GenerationOptions, new_cache, single_decoder
from blsp_emo.decoding.prefix_cache import PrefixCache, TokenSequence, remember
from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.prompts import Turn, chat_pieces, told_emotion
from blsp_emo.systems.asr import SpeechRecognizer
from blsp_emo.systems.base import Heard, LocalSystem
from blsp_emo.systems.ser import EmotionClassifier


class CascadeSystem(LocalSystem):
    def __init__(
        self,
        name: str,
        description: str,
        asr: SpeechRecognizer,
        llm,
        tokenizer: ChatTokenizer,
        system_prompt: str,
        ser: EmotionClassifier | None = None,
        window_seconds: float = 30.0,
        prefix_cache: PrefixCache | None = None,
        decoder: Decoder | None = None,
    ):
        self.name, self.description = name, description
        self.asr, self.ser, self.llm, self.tokenizer = asr, ser, llm, tokenizer
        self.system_prompt = system_prompt
        self.window_seconds = window_seconds
        self.emotion_source = "separate classifier" if ser is not None else None
        self.prefix_cache = prefix_cache  # as BlspSystem's: earlier turns' keys and values
        self.decoder = decoder or single_decoder(llm)

    def _hear(self, turn: Turn) -> Heard:
        if turn.audio is None:
            return Heard()
        scores = self.ser.classify(turn.audio) if self.ser is not None else {}
        return Heard(scores, self.asr.transcribe(turn.audio))

    def told(self, system_prompt: str, turn: Turn) -> str:
        """`system_prompt` as this system's LLM reads it for `turn`: cascade-ser's names the emotion
        its classifier heard."""
        return told_emotion(system_prompt, turn.emotion) if self.ser is not None and turn.emotion else system_prompt

    def prompt_pieces(self, turns: tuple[Turn, ...]):
        """The conversation as text, with the system prompt told the emotion of the turn being answered."""
        system = self.told(self.system_prompt, turns[-1])
        return chat_pieces(system, [Turn(t.role, t.text) for t in turns], speech_turns=False)

    def context_tokens(self) -> int | None:
        return self.llm.config.max_position_embeddings

    @torch.inference_mode()
    def _answer(
        self, turn: Turn, history: tuple[Turn, ...], options: GenerationOptions, seed: int
    ) -> tuple[Heard, Iterator[int]]:
        heard = self._hear(turn)
        if turn.audio is not None:
            turn = Turn("user", heard.transcript or "", None, heard.emotion)
        history, encoded = self._fit_prompt(
            turn,
            history,
            options,
            lambda turns: self.tokenizer.encode_pieces(self.prompt_pieces(turns)),
        )
        sequence = TokenSequence(tuple(encoded.input_ids), (), ())
        reused, cache = self.prefix_cache.lookup(sequence, self.llm.config) if self.prefix_cache else (0, None)
        cache = cache if cache is not None else new_cache(self.llm)
        ids = torch.tensor([sequence.ids[reused:]], device=self.llm.device)
        logits = self.llm(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        return heard, remember(
            self.prefix_cache, sequence, lambda on_done: self._decode(logits, cache, options, seed, on_done)
        )

    def _decode(self, logits, cache, options: GenerationOptions, seed: int, on_done) -> Iterator[int]:
        yield from self.decoder(logits, cache, options, self.tokenizer.stop_ids, seed)
        if on_done is not None:
            on_done(cache)
