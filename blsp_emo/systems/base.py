"""The interface every spoken-dialogue system answers through, and what it answers with."""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from blsp_emo.audio import AudioSource, load_audio
from blsp_emo.decoding.repeats import cut_repeats
from blsp_emo.options import GenerationOptions
from blsp_emo.prompts import Turn

if TYPE_CHECKING:  # a server of remote systems never loads a tokenizer
    from blsp_emo.model.tokenizer import ChatTokenizer, EncodedPrompt

# A typed turn's limit in characters. A 30 s spoken turn is about 80 words (450 characters); 2,000
# characters is a long paragraph (about 350 words, some 500 Qwen tokens), well inside the prompt
# window below. Unbounded text cost quadratically: 100,000 characters made a worker try to allocate
# 40 GB, and 50,000 took 2.7 GB and 17 s.
MAX_TEXT_CHARS = 2_000
# The prompt's limit in tokens: the released chat demo's `max_window_size` (docs/paper.md §2.4, §6), which
# leaves Qwen-7B-Chat's 8,192 positions room for the reply. A model with a shorter context gets its
# context less the reply's `max_new_tokens`. Earlier turns are dropped, oldest first, to fit.
MAX_PROMPT_TOKENS = 6_144


class TextTooLongError(ValueError):
    """A typed turn longer than `MAX_TEXT_CHARS`; its message is user-facing."""


class PromptTooLongError(ValueError):
    """The current turn alone does not fit the prompt window; its message is user-facing."""


def text_problem(text: str | None) -> str | None:
    """What is wrong with a typed message's length, as one line, or None."""
    if text is not None and len(text) > MAX_TEXT_CHARS:
        return f"Your message is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,} — shorten it."
    return None


@dataclass(frozen=True)
class Timings:
    first_token_s: float | None  # None when the reply is empty
    total_s: float


@dataclass(frozen=True)
class Reply:
    """One system's answer to one user turn.

    `emotion` is None and `emotion_scores` empty for systems that do not perceive emotion;
    `transcript` is None for end-to-end systems. While streaming, `done` is False and `text` grows.
    """

    system: str
    text: str
    emotion: str | None
    emotion_scores: Mapping[str, float]
    transcript: str | None
    timings: Timings
    token_ids: tuple[int, ...] = ()
    seed: int | None = None
    done: bool = True

    def to_json(self) -> dict:
        """The `respond --json` object (without `file`)."""
        return {
            "system": self.system,
            "emotion": self.emotion,
            "emotion_scores": dict(self.emotion_scores),
            "reply": self.text,
            "transcript": self.transcript,
            "timings": asdict(self.timings),
        }

    def turns(self, audio: np.ndarray | None = None, text: str | None = None) -> tuple[Turn, Turn]:
        """The user turn as this system understood it, and its reply, to extend a history with."""
        user_text = text if text is not None else (self.transcript or "")
        return Turn("user", user_text, audio, self.emotion), Turn("assistant", self.text)


@dataclass(frozen=True)
class Heard:
    """What a system perceived of the user's turn before replying."""

    emotion_scores: Mapping[str, float] = field(default_factory=dict)
    transcript: str | None = None

    @property
    def emotion(self) -> str | None:
        return max(self.emotion_scores, key=self.emotion_scores.get) if self.emotion_scores else None


def paced(replies: Iterator[Reply], interval: float) -> Iterator[Reply]:
    """The growing reply at most once per `interval` seconds, and always its first token and the end.

    Each update a page shows costs its server more than a demo-scale token (postprocessing, sending,
    and for a model worker a message to receive), so streams to a page are paced (docs/serving.md).
    """
    last = None
    try:
        for reply in replies:
            now = time.monotonic()
            if reply.done or last is None or now - last >= interval:
                last = now
                yield reply
    finally:  # closed early (a cancelled reply): stop the decoding underneath now, not when collected
        getattr(replies, "close", lambda: None)()


class SpokenDialogueSystem(ABC):
    """A system that hears a user turn (audio or typed text) and streams a reply.

    History is always an argument: a system object holds read-only models and no conversation,
    so one instance serves every session at once.
    """

    name: str
    description: str
    window_seconds: float
    emotion_source: str | None = None  # how it perceives emotion ("emotion head", ...); None: it does not

    def respond(
        self,
        audio: AudioSource | None = None,
        history: Sequence[Turn] = (),
        options: GenerationOptions = GenerationOptions(),
        text: str | None = None,
    ) -> Reply:
        reply = None
        for reply in self.stream(audio, history, options, text):  # noqa: B007 (the last update is the reply)
            pass
        return reply

    def revision(self) -> str:
        """A short fingerprint of the system's weights: where they came from, and a hash of the first
        values of every tensor (cheap even for a 7B model). Ratings record it."""
        import torch

        digest, sources = hashlib.sha256(), []
        for attr, part in sorted(vars(self).items()):
            if not isinstance(part, torch.nn.Module):
                continue
            sources.append(Path(str(getattr(getattr(part, "config", None), "_name_or_path", "") or attr)).name or attr)
            for name, tensor in part.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().flatten()[:64].float().cpu().numpy().tobytes())
        return f"{'+'.join(dict.fromkeys(sources))}@{digest.hexdigest()[:12]}"

    @abstractmethod
    def stream(
        self,
        audio: AudioSource | None = None,
        history: Sequence[Turn] = (),
        options: GenerationOptions = GenerationOptions(),
        text: str | None = None,
    ) -> Iterator[Reply]:
        """Yield the reply as it grows (`done=False`), then once more complete (`done=True`)."""


class LocalSystem(SpokenDialogueSystem):
    """A system whose models run in this process and produce the reply as token ids."""

    def stream(
        self,
        audio: AudioSource | None = None,
        history: Sequence[Turn] = (),
        options: GenerationOptions = GenerationOptions(),
        text: str | None = None,
    ) -> Iterator[Reply]:
        start = time.perf_counter()
        turn = self._user_turn(audio, text)
        seed = options.resolved_seed()
        heard, tokens = self._answer(turn, tuple(history), options, seed)
        partial = Reply(
            self.name, "", heard.emotion, heard.emotion_scores, heard.transcript, Timings(None, 0.0), (), seed, False
        )
        ids: list[int] = []
        first = None
        try:
            for token in tokens:
                ids.append(token)
                first = first if first is not None else time.perf_counter() - start
                text_so_far = self.tokenizer.decode(ids)  # holds back a character not yet whole
                text_so_far, repeated = cut_repeats(text_so_far) if options.stop_repeats else (text_so_far, False)
                if len(text_so_far) >= len(partial.text):  # a stream only grows
                    timings = Timings(first, time.perf_counter() - start)
                    partial = replace(partial, text=text_so_far, token_ids=tuple(ids), timings=timings)
                    yield partial
                if repeated and len(ids) >= options.min_new_tokens:
                    break
        finally:  # ended at a repeat (or closed by the caller): stop the decoding underneath now
            getattr(tokens, "close", lambda: None)()
        text = self.tokenizer.decode(ids).strip()
        yield replace(
            partial,
            text=cut_repeats(text, final=True)[0] if options.stop_repeats else text,
            token_ids=tuple(ids),
            timings=Timings(first, time.perf_counter() - start),
            done=True,
        )

    def _user_turn(self, audio: AudioSource | None, text: str | None) -> Turn:
        if (audio is None) == (text is None):
            raise ValueError("give exactly one of audio or text for the user turn")
        if text is not None:
            if problem := text_problem(text):
                raise TextTooLongError(problem)
            if not text.strip():
                raise ValueError("the message is empty; type something or record audio")
            return Turn("user", text.strip())
        return Turn("user", audio=load_audio(audio, max_seconds=self.window_seconds))

    tokenizer: ChatTokenizer

    def context_tokens(self) -> int | None:
        """How many positions the LLM has (None: unknown; `MAX_PROMPT_TOKENS` alone bounds the prompt)."""
        return None

    def _fit_prompt(
        self,
        turn: Turn,
        history: tuple[Turn, ...],
        options: GenerationOptions,
        encode: Callable[[tuple[Turn, ...]], EncodedPrompt],
    ) -> tuple[tuple[Turn, ...], EncodedPrompt]:
        """The history that fits the prompt window with `turn`, and the prompt `encode` makes of both.

        The one place every local system bounds its prompt: whole exchanges are dropped, oldest first
        (the released demo trims its history to fit 6,144 tokens too), and a turn that does not fit on
        its own is refused with `PromptTooLongError`. `encode(turns)` encodes the prompt of those turns.
        """
        context = self.context_tokens()
        limit = MAX_PROMPT_TOKENS if context is None else min(MAX_PROMPT_TOKENS, context - options.max_new_tokens)
        encoded = encode((*history, turn))
        if len(encoded.input_ids) <= limit:
            return history, encoded
        # Cut only where a user turn starts; fewer turns never make a longer prompt, so bisect.
        starts = [i for i, t in enumerate(history) if t.role == "user" and i > 0] + [len(history)]
        alone = encode((turn,))
        if len(alone.input_ids) > limit:
            raise PromptTooLongError(
                f"This turn alone is {len(alone.input_ids):,} tokens; the model's prompt limit is "
                f"{max(limit, 0):,} tokens — shorten it{' or lower max new tokens' if context else ''}."
            )
        low, high, best = 0, len(starts) - 1, (len(history), alone)
        while low <= high:
            mid = (low + high) // 2
            kept = history[starts[mid] :]
            encoded = encode((*kept, turn))
            if len(encoded.input_ids) <= limit:
                best, high = (starts[mid], encoded), mid - 1
            else:
                low = mid + 1
        return history[best[0] :], best[1]

    @abstractmethod
    def _answer(
        self, turn: Turn, history: tuple[Turn, ...], options: GenerationOptions, seed: int
    ) -> tuple[Heard, Iterator[int]]:
        """Perceive `turn` and return what was heard plus an iterator of reply token ids."""
