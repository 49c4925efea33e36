"""Training data: teacher-output manifests streamed row by row into `TrainingBatch`es.

Nothing is loaded ahead: each epoch shuffles the place of every line of every manifest (as the
released run shuffles its whole dataset: a buffer read in file order would train a corpus-ordered
manifest corpus by corpus while the learning rate decays), then reads each row by its place and
decodes its clip only when the row is reached, so a 1.9M-row manifest costs tens of megabytes. Rows that
cannot train are dropped and counted by reason (docs/paper.md §3.5: shorter than 1 s, longer than
30 s, unreadable, more than 256 text tokens); the run goes on and the report names examples.

Resuming: rows are numbered by their position in the shuffled order, which depends only on the
seed and the epoch. A checkpoint stores the next position, and the resumed run skips to it
without decoding anything. Data-parallel processes take every n-th position.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from blsp_emo.audio import SAMPLE_RATE, AudioError, AudioTooLongError, SilentAudioError, load_audio
from blsp_emo.emotion import EMOTION_TO_ID
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import SpeechPrompt, TrainingBatch
from blsp_emo.model.processor import clip_features, pad_rows, speech_lengths
from blsp_emo.model.tokenizer import IGNORE_INDEX, ChatTokenizer, EncodedPrompt
from blsp_emo.prompts import Piece, Speech, instruction_pieces, response_pieces
from train.manifest import TEACHER_KEYS, Row, RowPlace, RowReader, row_places
from train.stages import Stage

REASONS = ("missing_file", "unreadable", "silent", "too_short", "too_long", "too_many_tokens", "no_target")
MAX_EXAMPLES = 5  # paths kept per reason for the report


@dataclass(frozen=True)
class DataLimits:
    """Which rows train (docs/paper.md §3.5: --max_length 256, 1.0 s to --max_duration 30 s)."""

    min_seconds: float = 1.0
    max_seconds: float = 30.0
    max_tokens: int = 256  # text sequence: system + instruction + transcript + response

    def __post_init__(self):
        if not 0 < self.min_seconds < self.max_seconds or self.max_tokens < 1:
            raise ValueError(
                f"need 0 < min_seconds < max_seconds and max_tokens >= 1, got {self.min_seconds}, "
                f"{self.max_seconds}, {self.max_tokens}"
            )


@dataclass
class DataReport:
    """Rows kept and dropped (by reason, with a few example paths) in the current epoch."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < MAX_EXAMPLES:
            seen.append(where)


@dataclass(frozen=True)
class Example:
    audio: np.ndarray  # (T,) float32 16 kHz
    text_row: EncodedPrompt  # the teacher's prompt + response, labels on the response
    response: tuple[Piece, ...]  # the labelled pieces, shared by the speech and text rows
    emotion: int  # index into EMOTIONS, IGNORE_INDEX when the row has no label
    position: int  # in the shuffled order of this epoch
    audio_instruction: str  # before the speech in the student's prompt ("" = speech alone)


class ManifestDataset(IterableDataset):
    """Examples of one stage from teacher-output manifests, streamed, shuffled, sharded, filtered.

    Call `set_epoch` before each pass. Decoding happens here (in the main process: the loader
    uses no workers), so `report` sees every row.
    """

    def __init__(
        self,
        manifests: Sequence[str | Path],
        stage: Stage,
        tokenizer: ChatTokenizer,
        limits: DataLimits = DataLimits(),
        shuffle: bool = True,
        seed: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
        self.manifests = list(manifests)
        self.stage, self.tokenizer, self.limits = stage, tokenizer, limits
        self.shuffle, self.seed = shuffle, seed
        self._places: list[RowPlace] | None = None  # indexed once, on the first pass
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        self.report = DataReport()

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Next pass is epoch `epoch`, from shuffled position `start` (0, or a checkpoint's)."""
        self.epoch, self.start = epoch, start
        self.report = DataReport()

    def __iter__(self) -> Iterator[Example]:
        seed = self.seed * 100_003 + self.epoch  # a different order each epoch, the same on every rank
        if self._places is None:
            self._places = row_places(self.manifests)
        order = list(range(len(self._places)))
        if self.shuffle:
            random.Random(seed).shuffle(order)
        read = RowReader(self.manifests, TEACHER_KEYS)
        try:
            for position in range(self.start, len(order)):
                if position % self.world_size != self.rank:
                    continue  # skipped before reading: resuming costs nothing per skipped row
                example = self._example(read(self._places[order[position]]), position)
                if example is not None:
                    self.report.kept += 1
                    yield example
        finally:
            read.close()

    def _example(self, row: Row, position: int) -> Example | None:
        fields = row.fields
        emotion = row.emotion
        if fields["output"] is None:  # a reply `clean --replies` rejected: the clip teaches tone alone
            if not (emotion and "input_er" in self.stage.losses):
                self.report.drop("no_target", row.where)
                return None
            response: tuple[Piece, ...] = ()
        else:
            response = tuple(response_pieces(str(fields["output"]), bool(fields["early_stop"])))
            if not response:  # an empty output cut at max_new_tokens: no token to learn from
                self.report.drop("no_target", row.where)
                return None
        # The teacher's own instruction (kept in its output) so the KL teacher sees what it saw.
        instruction = fields.get("instruction") or self.stage.teacher_prompt(emotion)
        text_row = self.tokenizer.encode_pieces(
            instruction_pieces(self.stage.system_prompt, instruction, str(fields["text"])), (), response
        )
        if len(text_row.input_ids) > self.limits.max_tokens:
            self.report.drop("too_many_tokens", f"{row.where} ({len(text_row.input_ids)} > {self.limits.max_tokens})")
            return None
        audio = self._audio(row)
        if audio is None:
            return None
        label = EMOTION_TO_ID[emotion] if emotion else IGNORE_INDEX  # stage-1 rows need no label
        # A row may carry its own student instruction; "" is the chat layout (the speech alone).
        audio_instruction = fields.get("audio_instruction", self.stage.audio_instruction)
        return Example(audio, text_row, response, label, position, str(audio_instruction))

    def _audio(self, row: Row) -> np.ndarray | None:
        path = Path(row.fields["audio"])
        if not path.is_file():
            self.report.drop("missing_file", str(path))
            return None
        try:
            audio = load_audio(path, max_seconds=self.limits.max_seconds)
        except AudioTooLongError:
            self.report.drop("too_long", str(path))
            return None
        except SilentAudioError:
            self.report.drop("silent", str(path))
            return None
        except AudioError as e:
            self.report.drop("unreadable", str(e))
            return None
        if audio.size < self.limits.min_seconds * SAMPLE_RATE:
            self.report.drop("too_short", f"{path} ({audio.size / SAMPLE_RATE:.2f} s)")
            return None
        return audio


@dataclass(frozen=True)
class Batch:
    training: TrainingBatch
    next_position: int  # the shuffled position after this batch's last row


class Collator:
    """Examples -> a `TrainingBatch`: the speech prompt (student) and, for `response_kl`, the text
    prompt (teacher), both through blsp_emo.processor so training and inference build prompts alike."""

    def __init__(self, stage: Stage, tokenizer: ChatTokenizer, config: BlspEmoConfig, warp: float = 0.0):
        self.stage, self.tokenizer, self.config, self.warp = stage, tokenizer, config, warp

    def __call__(self, examples: list[Example]) -> Batch:
        features, counts = clip_features([e.audio for e in examples], self.config)
        if self.warp:
            features = self._warped(features, examples)
        lengths = speech_lengths(counts, self.config)
        rows = [
            self.tokenizer.encode_pieces(
                instruction_pieces(self.stage.system_prompt, e.audio_instruction, Speech(0)), [n], e.response
            )
            for e, n in zip(examples, lengths)
        ]
        ids, speech_mask, attention, labels = pad_rows(rows, self.tokenizer.pad_id)
        speech = SpeechPrompt(ids, speech_mask, attention, features, counts, labels)
        text = None
        if "response_kl" in self.stage.losses:  # only the KL loss runs the teacher
            ids, speech_mask, attention, labels = pad_rows([e.text_row for e in examples], self.tokenizer.pad_id)
            text = SpeechPrompt(ids, speech_mask, attention, labels=labels)
        emotions = torch.tensor([e.emotion for e in examples], dtype=torch.long)
        return Batch(TrainingBatch(speech, text, emotions), max(e.position for e in examples) + 1)

    def _warped(self, features: torch.Tensor, examples: list[Example]) -> torch.Tensor:
        """Each clip as another speaker might say it: formants and pitch moved together by a factor
        drawn from the clip's shuffled position and the stage seed, so a resumed run draws the same."""
        from train.demo_world.speech_corpus import warp_frequency

        out = features.clone()
        for i, e in enumerate(examples):
            alpha = 1 + self.warp * random.Random(f"{self.stage.seed}:{e.position}").uniform(-1, 1)
            out[i] = warp_frequency(features[i].float(), alpha).to(features.dtype)
        return out
