"""The two BLSP-Emo alignment stages as data, and the one function that applies a stage to a model.

A stage says what is trainable, which losses train it, which prompts build its data and the
paper's hyperparameters (docs/paper.md §1.3, §2, §4). The training loop never asks which stage it
runs; it reads these fields. Stage behaviour spread over boolean flags (`--unfreeze_adapter`,
`--unfreeze_qwen`, a comma-string of loss names) is what the released scripts did.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from blsp_emo.model.checkpoint import load_pretrained, resolve
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import LOSSES, BlspEmoModel
from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.prompts import (
    STAGE1_INSTRUCTION,
    STAGE2_AUDIO_INSTRUCTION,
    STAGE2_TEACHER_INSTRUCTION,
    SYSTEM_EMPATHETIC,
    SYSTEM_PLAIN,
)

# The parts a stage may train, by the model attribute that holds them. The LLM itself is never
# trained: stage 2 adapts it through the audio-scoped LoRA only (docs/paper.md §1.3).
PARTS = ("adapter", "lora", "emotion_head", "encoder")


@dataclass(frozen=True)
class Stage:
    """One alignment stage. Defaults of the numbers are the released scripts' (docs/paper.md §4)."""

    name: str
    description: str
    trainable: frozenset[str]  # of PARTS
    losses: tuple[str, ...]  # names in blsp_emo.model.LOSSES, summed with weight 1
    system_prompt: str
    teacher_instruction: str  # before the transcript, for the text LLM; may name "{emotion}"
    audio_instruction: str  # before the speech, for the model being trained
    lr: float
    warmup_steps: int
    batch_size: int  # per device
    grad_accum: int
    epochs: int
    save_steps: int
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 1
    # With "encoder" trainable: only its top N layers and its final norm learn (None: all of it), at
    # their own rate (None: `lr`). A pretrained encoder's top layers are where tone is read and
    # the bundle stores only what changed; a rate fit for a fresh adapter would undo its training.
    encoder_layers: int | None = None
    encoder_lr: float | None = None

    def __post_init__(self):
        unknown = set(self.trainable) - set(PARTS)
        if unknown or not self.trainable:
            raise ValueError(
                f"stage {self.name}: trainable {sorted(self.trainable)} must be a non-empty subset of {PARTS}"
            )
        bad = [name for name in self.losses if name not in LOSSES]
        if bad or not self.losses:
            raise ValueError(f"stage {self.name}: losses {list(self.losses)} must be names from {sorted(LOSSES)}")
        for field in ("lr", "batch_size", "grad_accum", "epochs", "save_steps"):
            if getattr(self, field) <= 0:
                raise ValueError(f"stage {self.name}: {field} must be > 0, got {getattr(self, field)}")
        if (self.encoder_layers is not None or self.encoder_lr is not None) and "encoder" not in self.trainable:
            raise ValueError(
                f"stage {self.name}: encoder_layers/encoder_lr apply to a trainable encoder; add it with `with_encoder`"
            )
        if (self.encoder_layers is not None and self.encoder_layers < 1) or (
            self.encoder_lr is not None and self.encoder_lr <= 0
        ):
            raise ValueError(
                f"stage {self.name}: encoder_layers must be >= 1 and encoder_lr > 0; "
                f"got {self.encoder_layers}, {self.encoder_lr}"
            )
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError(
                f"stage {self.name}: need warmup_steps >= 0, weight_decay >= 0, max_grad_norm > 0; got "
                f"{self.warmup_steps}, {self.weight_decay}, {self.max_grad_norm}"
            )

    @property
    def names_emotion(self) -> bool:
        """Whether the teacher is told the emotion, so each row needs a label."""
        return "{emotion}" in self.teacher_instruction

    def teacher_prompt(self, emotion: str) -> str:
        return self.teacher_instruction.format(emotion=emotion)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            name="stage1",
            description="semantic alignment: the adapter learns to make speech read like its transcript",
            trainable=frozenset({"adapter"}),
            losses=("response_kl",),
            system_prompt=SYSTEM_PLAIN,
            # Released: no --audio_instruction, so the student sees the teacher's instruction.
            teacher_instruction=STAGE1_INSTRUCTION,
            audio_instruction=STAGE1_INSTRUCTION,
            lr=1e-4,
            warmup_steps=1000,
            batch_size=8,
            grad_accum=24,
            epochs=1,
            save_steps=200,
        ),
        Stage(
            name="stage2",
            description="emotion alignment: adapter + audio-scoped LoRA + emotion head learn to hear tone",
            # The paper's figure also trains the encoder; the released script does not (reference
            # §1.3). We default to the released behaviour; `with_encoder` adds it.
            trainable=frozenset({"adapter", "lora", "emotion_head"}),
            losses=("response_ce", "input_er"),
            system_prompt=SYSTEM_EMPATHETIC,
            teacher_instruction=STAGE2_TEACHER_INSTRUCTION,
            audio_instruction=STAGE2_AUDIO_INSTRUCTION,
            lr=2e-5,
            warmup_steps=200,
            batch_size=4,
            grad_accum=8,
            epochs=3,
            save_steps=500,
        ),
    )
}


def with_encoder(stage: Stage, layers: int | None = None, lr: float | None = None) -> Stage:
    """The stage with the Whisper encoder trainable too (the paper's figure for stage 2): its top
    `layers` layers and final norm (all of it when None), at rate `lr` (the stage's when None)."""
    return replace(stage, trainable=stage.trainable | {"encoder"}, encoder_layers=layers, encoder_lr=lr)


def _encoder_parameters(model: BlspEmoModel, stage: Stage) -> list[nn.Parameter]:
    """The encoder parameters `stage` trains: all of them, or its top layers and final norm."""
    if stage.encoder_layers is None:
        return list(model.encoder.parameters())
    layers = model.encoder.layers
    if stage.encoder_layers > len(layers):
        raise ValueError(
            f"stage {stage.name}: encoder_layers={stage.encoder_layers} but the encoder has {len(layers)} layers; "
            f"pass at most {len(layers)}"
        )
    top = layers[len(layers) - stage.encoder_layers :]
    return [p for layer in top for p in layer.parameters()] + list(model.encoder.layer_norm.parameters())


def apply_stage(model: BlspEmoModel, stage: Stage) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze exactly `stage.trainable`; returns the trainable parameters.

    The released code left the emotion head trainable in stage 1 (nothing fed it); here a part
    trains only when its stage says so.
    """
    model.requires_grad_(False)
    for part in sorted(stage.trainable):
        module = getattr(model, part)
        if module is None:
            raise ValueError(
                f"stage {stage.name} trains {part!r} but the model has none (lora_rank={model.config.lora_rank}); "
                "start from a model built with it, e.g. `init_model(..., lora_rank=16)`"
            )
        if part == "encoder":
            for p in _encoder_parameters(model, stage):
                p.requires_grad_(True)
        else:
            module.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def parameter_groups(model: BlspEmoModel, stage: Stage, params: list[nn.Parameter]) -> list[dict]:
    """The optimizer's groups: one, or two when the encoder learns at its own rate."""
    if stage.encoder_lr is None:
        return [{"params": params}]
    encoder = {id(p) for p in model.encoder.parameters()}
    return [
        {"params": [p for p in params if id(p) not in encoder]},
        {"params": [p for p in params if id(p) in encoder], "lr": stage.encoder_lr},
    ]


def trainable_summary(model: BlspEmoModel, stage: Stage) -> str:
    counts = {
        part: sum(p.numel() for p in getattr(model, part).parameters() if p.requires_grad)
        for part in sorted(stage.trainable)
    }
    return ", ".join(f"{part} {n / 1e6:.2f}M" for part, n in counts.items())


def _starting_model(folder: Path) -> tuple[BlspEmoModel, ChatTokenizer]:
    """A saved model, or a bundled one (trained parts over bases named by hash, such as
    assets/models/blsp) on its own copy of the bases: loaded bases are shared by every model in the
    process, and training must not change them under the others."""
    import copy

    from blsp_emo.model import on_bases

    if on_bases.is_on_bases(folder):
        model, tokenizer = on_bases.load_on_bases(folder)
        return copy.deepcopy(model), tokenizer
    return load_pretrained(BlspEmoModel, folder), ChatTokenizer.from_pretrained(folder)


def init_model(path: str | Path, stage: Stage, lora_rank: int = 16) -> tuple[BlspEmoModel, ChatTokenizer]:
    """The model a stage starts from: the folder as saved, plus a fresh LoRA if the stage trains one.

    Stage 2 starts from a stage-1 model, which has no LoRA (docs/paper.md §4: "stage-1 checkpoint + new
    LoRA"). The LoRA lives in `BlspEmoModel.lora`, built from `config.lora_rank`, so we build a
    model with `lora_rank` > 0 around the loaded encoder and LLM and copy every stage-1 tensor in;
    only LoRA tensors may be missing, anything else is a mismatch and refused.
    """
    folder = resolve(path)
    base, tokenizer = _starting_model(folder)
    if "lora" not in stage.trainable or base.lora is not None:
        return base, tokenizer
    if lora_rank < 1:
        raise ValueError(f"stage {stage.name} trains a LoRA: lora_rank must be >= 1, got {lora_rank}")
    # lora_alpha = rank keeps the released scaling alpha / r = 16 / 16 = 1; one A for q, k and v is
    # the released fused c_attn LoRA (three separate A's would add 4.2 M parameters at 7B).
    config = BlspEmoConfig.from_dict(
        {**base.config.to_dict(), "lora_rank": lora_rank, "lora_alpha": float(lora_rank), "lora_shared_qkv_a": True}
    )
    model = BlspEmoModel(config, encoder=base.encoder, llm=base.llm)  # shares the loaded weights
    result = model.load_state_dict(base.state_dict(), strict=False)
    lora_keys = {k for k in model.state_dict() if k.startswith("lora.")}
    if set(result.missing_keys) != lora_keys or result.unexpected_keys:
        raise ValueError(
            f"{folder}: adding a LoRA expected only LoRA tensors to be missing; missing "
            f"{sorted(set(result.missing_keys) - lora_keys)[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model, tokenizer
