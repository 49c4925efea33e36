"""BLSP-Emo: Whisper encoder -> adapter -> Qwen2 LLM with audio-scoped LoRA, plus an emotion head.

Built from transformers parts (`WhisperEncoder`, `Qwen2ForCausalLM`); our code is the adapter, the
LoRA and the head. Training losses are chosen by name per call, never by state set beforehand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel, Qwen2ForCausalLM
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from blsp_emo.decoding.generation import Decoder, GenerationOptions, new_cache, single_decoder
from blsp_emo.emotion import masked_mean
from blsp_emo.model.adapter import Adapter
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.encoder import encode
from blsp_emo.model.lora import ScopedLoRA
from blsp_emo.model.tokenizer import IGNORE_INDEX


@dataclass
class SpeechEmbeddings:
    """Adapter output for a batch of clips: `embeds` (N, T, d_llm); clip n is valid up to `lengths[n]`."""

    embeds: torch.Tensor
    lengths: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """(sum(lengths), d_llm): the valid rows of every clip, clip after clip."""
        mask = torch.arange(self.embeds.shape[1], device=self.embeds.device)[None] < self.lengths[:, None]
        return self.embeds[mask]


@dataclass
class SpeechPrompt:
    """One tokenised prompt row, or a right-padded batch of rows, with its clips' features.

    `speech_mask` marks the positions the clips' embeddings fill, in row-major order.
    """

    input_ids: torch.Tensor  # (B, T)
    speech_mask: torch.Tensor  # (B, T) bool
    attention_mask: torch.Tensor | None = None  # (B, T); None = no padding
    input_features: torch.Tensor | None = None  # (N_clips, n_mels, n_frames)
    frame_counts: torch.Tensor | None = None  # (N_clips,)
    labels: torch.Tensor | None = None  # (B, T), IGNORE_INDEX outside the response


@dataclass
class TrainingBatch:
    speech: SpeechPrompt  # the student: instruction + speech + response
    text: SpeechPrompt | None = None  # the teacher for `response_kl`: instruction + transcript + response
    emotion_labels: torch.Tensor | None = None  # (B,), IGNORE_INDEX where a clip has no label


@dataclass
class BlspEmoOutput:
    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    emotion_logits: torch.Tensor | None = None


class BlspEmoModel(PreTrainedModel):
    config_class = BlspEmoConfig
    base_model_prefix = "blsp_emo"
    main_input_name = "input_features"
    _no_split_modules = ["WhisperEncoderLayer", "Qwen2DecoderLayer"]
    _supports_sdpa = True

    def __init__(
        self, config: BlspEmoConfig, encoder: WhisperEncoder | None = None, llm: Qwen2ForCausalLM | None = None
    ):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else WhisperEncoder(config.encoder_config)
        self.llm = llm if llm is not None else Qwen2ForCausalLM(config.llm_config)
        d_enc, d_llm = config.encoder_config.d_model, config.llm_config.hidden_size
        self.adapter = Adapter(d_enc, d_llm, config.conv_kernel_sizes, config.conv_stride, config.adapter_inner_dim)
        self.emotion_head = nn.Linear(d_llm, len(config.emotions), bias=False)
        self.lora = (
            ScopedLoRA(
                self.llm,
                config.lora_rank,
                config.lora_alpha,
                config.lora_dropout,
                config.lora_target_modules,
                config.lora_shared_qkv_a,
            )
            if config.lora_rank > 0
            else None
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Sub-models initialise themselves and our modules use PyTorch's defaults (LoRA B = 0);
        # from_pretrained overwrites everything and refuses missing tensors (see checkpoint.py).
        pass

    # --- speech ---------------------------------------------------------------------------------

    @property
    def n_frames(self) -> int:
        """Mel frames the encoder takes: the full window, as the released model always encodes."""
        return self.config.encoder_config.max_source_positions * 2

    def encode_speech(self, input_features: torch.Tensor, frame_counts: torch.Tensor) -> SpeechEmbeddings:
        """(N, n_mels, n_frames) log-mel + valid frame counts -> speech embeddings (N, T, d_llm)."""
        hidden, valid = encode(self.encoder, input_features, frame_counts, self.config.encode_full_window)
        # As released: truncate to the longest valid length before the adapter. Unlike the release,
        # the adapter zeroes each clip's steps past its own end at every layer, so a clip's
        # embeddings equal those it gets alone (the convs' zero padding) whatever it is batched with.
        embeds = self.adapter(hidden[:, : int(valid.max())], valid)
        lengths = self.adapter.output_length(frame_counts.to(self.device))
        return SpeechEmbeddings(embeds[:, : int(lengths.max())], lengths)

    def emotion_logits(self, speech: SpeechEmbeddings) -> torch.Tensor:
        """(N, n_emotions): the head on the mean of each clip's valid adapter output."""
        return self.emotion_head(masked_mean(speech.embeds, speech.lengths))

    # --- LLM input ------------------------------------------------------------------------------

    def embed_prompt(self, prompt: SpeechPrompt, speech: SpeechEmbeddings | None) -> torch.Tensor:
        """Token embeddings with speech positions replaced by speech embeddings: (B, T, d_llm)."""
        input_ids = prompt.input_ids.to(self.device)
        embeds = self.llm.get_input_embeddings()(input_ids)
        mask = prompt.speech_mask.to(self.device)
        n_positions = int(mask.sum())
        rows = speech.valid if speech is not None else embeds.new_zeros((0, embeds.shape[-1]))
        if n_positions != rows.shape[0]:
            raise ValueError(
                f"Speech embeddings and speech positions do not match: positions {n_positions}, "
                f"embeddings {rows.shape[0]}"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), rows.to(embeds.dtype))

    def lora_scope(self, speech_mask: torch.Tensor):
        """LoRA at the masked positions; a prompt without speech runs on the base weights alone."""
        if self.lora is None or not bool(speech_mask.any()):
            return contextlib.nullcontext()
        return self.lora.scope(speech_mask.to(self.device))

    def speech_forward(self, prompt: SpeechPrompt, speech: SpeechEmbeddings | None, **kwargs):
        """One LLM forward over a speech prompt, LoRA active at its speech positions."""
        embeds = self.embed_prompt(prompt, speech)
        attention = prompt.attention_mask.to(self.device) if prompt.attention_mask is not None else None
        with self.lora_scope(prompt.speech_mask):
            return self.llm(inputs_embeds=embeds, attention_mask=attention, **kwargs)

    # --- training -------------------------------------------------------------------------------

    def forward(self, batch: TrainingBatch, losses: Sequence[str] = ("response_ce",)) -> BlspEmoOutput:
        """Compute the named training losses (summed with weight 1, as released).

        `response_kl`: KL(teacher || student) at temperature `kd_temperature` over the response,
        the teacher being this LLM on the text prompt with the base weights. `response_ce`:
        next-token cross-entropy of the response given speech. `input_er`: cross-entropy of the
        emotion head.
        """
        unknown = [name for name in losses if name not in LOSSES]
        if unknown or not losses:
            raise ValueError(f"unknown losses {unknown or list(losses)}; choose from {sorted(LOSSES)}")
        prompt = batch.speech
        speech = self.encode_speech(prompt.input_features, prompt.frame_counts)
        emotion_logits = self.emotion_logits(speech) if "input_er" in losses else None
        # The LLM reads only the rows with a reply to learn. A stage-2 row kept for its tone alone
        # (`clean --replies`) trains the emotion head, which reads the adapter's output before the
        # LLM: in the demo world's stage 2 that spares the LLM half the rows.
        replying, speech_rows = _replying(batch, speech)
        logits = self.speech_forward(replying.speech, speech_rows).logits
        labels = replying.speech.labels
        no_reply = labels is not None and not bool((labels != IGNORE_INDEX).any())
        values = {}
        for name in losses:
            if name == "input_er":
                values[name] = input_er(self, batch, None, emotion_logits)
            elif no_reply:  # nothing to learn, and not nan; every trained part stays in the graph (DDP)
                values[name] = logits.sum() * 0.0
            else:
                values[name] = LOSSES[name](self, replying, logits, None)
        return BlspEmoOutput(sum(values.values()), values, logits, emotion_logits)

    # --- inference ------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate_stream(
        self,
        prompt: SpeechPrompt,
        speech: SpeechEmbeddings | None,
        options: GenerationOptions,
        stop_ids: frozenset[int],
        seed: int,
        cache: DynamicCache | None = None,
        on_done: Callable[[DynamicCache], None] | None = None,
        decoder: Decoder | None = None,
    ) -> Iterator[int]:
        """Reply token ids for one prompt row: LoRA in the prefill only, base weights after it.

        `cache` holds the keys and values of positions before `prompt` (a reused conversation
        prefix; see `blsp_emo/decoding/prefix_cache.py`), so `prompt` is only the rest. `on_done(cache)` gets the cache
        of prompt + every yielded token once the reply is complete (not when abandoned midway).
        `decoder` continues after the prefill (default: `decode` in this thread; a `DecodeBatcher`
        steps concurrent replies together).
        """
        cache = cache if cache is not None else new_cache(self.llm)
        out = self.speech_forward(prompt, speech, past_key_values=cache, use_cache=True, logits_to_keep=1)
        decoder = decoder or single_decoder(self.llm)
        yield from decoder(out.logits[:, -1], cache, options, stop_ids, seed)
        if on_done is not None:
            on_done(cache)


def _replying(batch: TrainingBatch, speech: SpeechEmbeddings) -> tuple[TrainingBatch, SpeechEmbeddings]:
    """The rows of `batch` whose response has labels, with their clips' embeddings; a batch with
    none keeps its first row, so that the LLM still runs (its loss is then 0). Rows and clips pair
    one to one in training; a batch of several clips a row is kept whole."""
    labels = batch.speech.labels
    if labels is None or speech.embeds.shape[0] != labels.shape[0]:
        return batch, speech
    keep = (labels != IGNORE_INDEX).any(dim=1)
    if bool(keep.all()):
        return batch, speech
    if not bool(keep.any()):
        keep[0] = True
    rows = TrainingBatch(_prompt_rows(batch.speech, keep), _prompt_rows(batch.text, keep))
    return rows, SpeechEmbeddings(
        speech.embeds[keep.to(speech.embeds.device)], speech.lengths[keep.to(speech.lengths.device)]
    )


def _prompt_rows(prompt: SpeechPrompt | None, keep: torch.Tensor) -> SpeechPrompt | None:
    if prompt is None:
        return None
    pick = lambda t: None if t is None else t[keep.to(t.device)]  # noqa: E731
    return SpeechPrompt(
        pick(prompt.input_ids),
        pick(prompt.speech_mask),
        pick(prompt.attention_mask),
        pick(prompt.input_features),
        pick(prompt.frame_counts),
        pick(prompt.labels),
    )


def _response_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict a response token: (B, T) bool, shifted by one.

    The released code compares unshifted logits, which skips the prediction of the first response
    token and scores one past the last; we score exactly the predictions of the labelled tokens.
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted != IGNORE_INDEX


def response_kl(model: BlspEmoModel, batch: TrainingBatch, logits: torch.Tensor, _emotion) -> torch.Tensor:
    if batch.text is None:
        raise ValueError("response_kl needs the text (teacher) prompt in TrainingBatch.text")
    with torch.no_grad():
        teacher = model.speech_forward(batch.text, None).logits
    student_pos = _response_positions(batch.speech.labels.to(logits.device))
    teacher_pos = _response_positions(batch.text.labels.to(logits.device))
    if int(student_pos.sum()) != int(teacher_pos.sum()):
        raise ValueError("speech and text prompts must carry the same response labels")
    t = model.config.kd_temperature
    student = F.log_softmax(logits[student_pos].float() / t, dim=-1)
    target = F.softmax(teacher[teacher_pos].float() / t, dim=-1)
    return F.kl_div(student, target, reduction="batchmean")


def response_ce(model: BlspEmoModel, batch: TrainingBatch, logits: torch.Tensor, _emotion) -> torch.Tensor:
    labels = batch.speech.labels.to(logits.device)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


def input_er(model: BlspEmoModel, batch: TrainingBatch, _logits, emotion_logits: torch.Tensor) -> torch.Tensor:
    if batch.emotion_labels is None:
        raise ValueError("input_er needs emotion labels in TrainingBatch.emotion_labels")
    labels = batch.emotion_labels.to(emotion_logits.device)
    if bool((labels == IGNORE_INDEX).all()):
        return emotion_logits.sum() * 0.0  # a batch without labels contributes nothing
    return F.cross_entropy(emotion_logits.float(), labels, ignore_index=IGNORE_INDEX)


LOSSES = {"response_kl": response_kl, "response_ce": response_ce, "input_er": input_er}
