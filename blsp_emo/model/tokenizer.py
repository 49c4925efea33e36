"""Text <-> token ids for prompts made of pieces, over any Hugging Face tokenizer with ChatML tokens.

The released code encodes user text with `allowed_special=set()`: a special-token string typed by
a user is plain text, never a control token. `split_special_tokens=True` gives the same here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from blsp_emo.prompts import END_OF_TEXT, IM_END, IM_START, SPECIAL_TOKENS, Piece, Special, Speech

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one prompt; `speech_mask[i]` marks positions that speech embeddings fill."""

    input_ids: list[int]
    speech_mask: list[bool]
    labels: list[int]


class ChatTokenizer:
    """A thin, typed wrapper that turns prompt pieces into ids and reply ids back into text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"tokenizer lacks the ChatML special tokens {missing}")
        self.hf = tokenizer
        self.special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        # Generation ends at <|im_end|>, or at <|im_start|>/<|endoftext|> (released stop words).
        self.stop_ids = frozenset(self.special_ids.values())

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ChatTokenizer:
        # Our folders always hold tokenizer.json; AutoTokenizer would also parse config.json and
        # warn that a `blsp_emo` config is not a tokenizer's model type.
        return cls(PreTrainedTokenizerFast.from_pretrained(str(path)))

    def save_pretrained(self, path: str | Path) -> None:
        self.hf.save_pretrained(str(path))

    @property
    def pad_id(self) -> int:
        return self.special_ids[END_OF_TEXT]

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        text = self.hf.decode([i for i in ids if i not in self.stop_ids], skip_special_tokens=True)
        # A character whose bytes span tokens decodes to U+FFFD until its last byte arrives: hold
        # it back, so a streamed reply (or one cut at max_new_tokens) never shows a broken glyph.
        return text.rstrip("\ufffd")

    def encode_pieces(
        self,
        pieces: Sequence[Piece],
        speech_lengths: Sequence[int] = (),
        target: Sequence[Piece] = (),
    ) -> EncodedPrompt:
        """Ids for `pieces` + `target`; speech slot k expands to `speech_lengths[k]` positions.

        Only `target` positions carry labels (the rest are IGNORE_INDEX).
        """
        ids: list[int] = []
        speech: list[bool] = []
        for piece in pieces:
            piece_ids, is_speech = self._piece(piece, speech_lengths)
            ids += piece_ids
            speech += [is_speech] * len(piece_ids)
        labels = [IGNORE_INDEX] * len(ids)
        for piece in target:
            piece_ids, is_speech = self._piece(piece, speech_lengths)
            if is_speech:
                raise ValueError("a training target cannot contain speech")
            ids += piece_ids
            speech += [False] * len(piece_ids)
            labels += piece_ids
        return EncodedPrompt(ids, speech, labels)

    def _piece(self, piece: Piece, speech_lengths: Sequence[int]) -> tuple[list[int], bool]:
        if isinstance(piece, Special):
            return [self.special_ids[piece.token]], False
        if isinstance(piece, Speech):
            if piece.clip >= len(speech_lengths):
                raise ValueError(f"prompt has speech slot {piece.clip} but only {len(speech_lengths)} clip(s)")
            # Placeholder ids: these rows are replaced by speech embeddings before the LLM runs.
            return [self.pad_id] * int(speech_lengths[piece.clip]), True
        return self.encode(piece), False


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int) -> ChatTokenizer:
    """A byte-level BPE tokenizer (Qwen's pre-tokeniser family) with the ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=END_OF_TEXT, bos_token=None)
    hf.add_special_tokens({"additional_special_tokens": [IM_START]})
    return ChatTokenizer(hf)
