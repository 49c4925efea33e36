"""A model stored as what training changed, on top of the pretrained bases it names by hash.

A BLSP-Emo model on Whisper tiny.en and SmolLM2 is 153 M parameters, of which training changes the
adapter, the LoRA and the emotion head (and any encoder layers it tunes). The folder keeps only
those tensors (`trained.safetensors`, half precision, or 8 bits a weight) beside `config.json`,
whose `bases` record each base's source and SHA-256 (`blsp_emo.bases.sources`). Loading converts
or finds the bases in the cache, refuses a base with another hash, builds the composite on them and
lays the stored tensors over it.

A tensor is stored when it differs from the base's, so a stage that also trained the encoder
stores the encoder too, and nothing needs to know which parts a stage trained. Bases are loaded
once per process and shared read-only by every model built on them (the LoRA acts only inside
its own scope, so two composites can share one LLM).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.tokenizer import ChatTokenizer

TRAINED_FILE = "trained.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
STORED_DTYPE = torch.float16  # trained parts are small numbers; fp16 keeps 10 mantissa bits (bf16: 7)
# In 8 bits, a matrix is stored as int8 with one float32 scale per output row (absmax / 127), under
# its own name and this suffix; vectors and small tensors stay in half precision.
SCALE_SUFFIX = ".int8_row_scale"
MIN_QUANTIZED = 4096  # elements: below this the scales would cost more than the bits save


class TrainedPartsError(ValueError):
    """The stored tensors do not fit the composite built on the named bases."""


def is_on_bases(folder: Path) -> bool:
    return (folder / TRAINED_FILE).is_file() and not (folder / "model.safetensors").exists()


@lru_cache(maxsize=4)
def base_encoder(source: str, sha256: str):
    """The Whisper encoder of a recorded base, checked against its hash; one per process, read-only
    (the SER and the BLSP-Emo models on it share it; one that fine-tunes it takes a copy)."""
    from blsp_emo.bases.sources import check_base, load_whisper, prepare

    encoder = prepare("encoder", source)
    check_base({"source": source, "sha256": sha256}, encoder, "this model")
    whisper, _ = load_whisper(encoder)
    return whisper.model.encoder.requires_grad_(False)


@lru_cache(maxsize=4)
def base_modules(encoder_source: str, encoder_sha: str, llm_source: str, llm_sha: str):
    """(Whisper encoder, LLM, LLM tokenizer) of the recorded bases, each checked against its hash."""
    from blsp_emo.bases.sources import check_base, load_llm, prepare

    llm = prepare("llm", llm_source)
    check_base({"source": llm_source, "sha256": llm_sha}, llm, "this model")
    language_model, tokenizer = load_llm(llm)
    tokenizer = tokenizer if isinstance(tokenizer, ChatTokenizer) else ChatTokenizer(tokenizer)
    return base_encoder(encoder_source, encoder_sha), language_model.requires_grad_(False), tokenizer


def read_changes(path: Path) -> dict[str, torch.Tensor]:
    """The stored tensors, 8-bit matrices already turned back into float32."""
    from safetensors import SafetensorError

    from blsp_emo.model.weights import CorruptWeightsError

    try:
        stored = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CorruptWeightsError(
            f"{path} is damaged ({e}); rebuild it with `python -m train demo`, or copy it again"
        ) from e
    for name in [k for k, v in stored.items() if v.dtype == torch.int8]:
        scale = stored.pop(name + SCALE_SUFFIX, None)
        if scale is None or scale.shape != stored[name].shape[:1]:
            raise CorruptWeightsError(
                f"{path}: 8-bit tensor {name} has no row scales; rebuild it with `python -m train demo`"
            )
        stored[name] = dequantize(stored[name], scale)
    return stored


def quantize(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and float32 per-row scales (rows along dim 0) with values ~= int8 * scale."""
    rows = tensor.detach().float().reshape(tensor.shape[0], -1)
    scale = rows.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    values = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values.reshape(tensor.shape).contiguous(), scale.contiguous()


def dequantize(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (values.float().reshape(values.shape[0], -1) * scale[:, None]).reshape(values.shape)


def _bases(config: BlspEmoConfig, folder: Path):
    bases = getattr(config, "bases", None) or {}
    if set(bases) != {"encoder", "llm"}:
        raise TrainedPartsError(
            f"{folder / 'config.json'} names no encoder and LLM base (bases: {sorted(bases)}); a folder with "
            f"{TRAINED_FILE} needs them: rebuild it with `python -m train demo`"
        )
    e, m = bases["encoder"], bases["llm"]
    return base_modules(e["source"], e["sha256"], m["source"], m["sha256"])


def reference_state(config: BlspEmoConfig, folder: Path) -> dict[str, torch.Tensor]:
    """The bases' tensors under the names the composite gives them (encoder.*, llm.*)."""
    encoder, llm, _ = _bases(config, folder)
    return {
        **{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
        **{f"llm.{k}": v for k, v in llm.state_dict().items()},
    }


def save_changes(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], folder: Path, bits: int = 16
) -> dict:
    """Write the tensors of `state` that `reference` lacks or holds with other values, in half
    precision, or with `bits=8` their matrices in 8 bits (`quantize`)."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    changed = {
        k: v.detach().to("cpu", STORED_DTYPE).contiguous()
        for k, v in state.items()
        if k not in reference or not torch.equal(v.detach().cpu(), reference[k])
    }
    if bits == 8:
        for name in [k for k, v in changed.items() if v.dim() >= 2 and v.numel() >= MIN_QUANTIZED]:
            changed[name], changed[name + SCALE_SUFFIX] = quantize(state[name])
    folder.mkdir(parents=True, exist_ok=True)
    # "bits" only where it is 8: a half-precision file stays byte for byte what it was before 8 bits
    # existed, so the evaluation's kept rows (named by file digests) still find it.
    metadata = {"format": "pt", **({"bits": "8"} if bits == 8 else {})}
    save_file(changed, str(folder / TRAINED_FILE), metadata=metadata)
    return {"tensors": len(changed), "bytes": (folder / TRAINED_FILE).stat().st_size}


def save_on_bases(model: BlspEmoModel, tokenizer: ChatTokenizer, folder: str | Path, bits: int = 16) -> dict:
    """Write `model` as its changes over its bases, in `bits` (`save_changes`); returns what was
    stored (tensors, bytes). The tokenizer is the LLM base's unless training changed it, and then
    only is it written (3.5 MB a model for SmolLM2's: the bundle holds what training made, nothing
    the base already has)."""
    folder = Path(folder)
    stored = save_changes(model.state_dict(), reference_state(model.config, folder), folder, bits)
    model.config.save_pretrained(str(folder))
    if not same_tokenizer(tokenizer, _bases(model.config, folder)[2]):
        tokenizer.save_pretrained(folder)
    else:  # a folder saved over keeps no tokenizer of an earlier model: loading would prefer it
        for name in TOKENIZER_FILES:
            (folder / name).unlink(missing_ok=True)
    return stored


def same_tokenizer(a: ChatTokenizer, b: ChatTokenizer) -> bool:
    """Whether two tokenizers split and template text alike (the whole of tokenizer.json, and the
    chat template)."""
    return (
        a.hf.backend_tokenizer.to_str() == b.hf.backend_tokenizer.to_str() and a.hf.chat_template == b.hf.chat_template
    )


def load_on_bases(folder: Path) -> tuple[BlspEmoModel, ChatTokenizer]:
    """The composite on its recorded bases with the stored tensors laid over it (float32, eval)."""
    import copy

    config = BlspEmoConfig.from_pretrained(str(folder))
    encoder, llm, base_tokenizer = _bases(config, folder)
    stored = read_changes(folder / TRAINED_FILE)
    # A stage that changed a base part gets its own copy: the shared one stays the base.
    if any(k.startswith("encoder.") for k in stored):
        encoder = copy.deepcopy(encoder)
    if any(k.startswith("llm.") for k in stored):
        llm = copy.deepcopy(llm)
    model = BlspEmoModel(config, encoder=encoder, llm=llm)
    names = set(model.state_dict())
    unknown = sorted(set(stored) - names)
    if unknown:
        raise TrainedPartsError(
            f"{folder / TRAINED_FILE} holds tensors the composite lacks ({unknown[:3]}); it was made for "
            "another architecture: rebuild it with `python -m train demo`"
        )
    missing = sorted(k for k in names - set(stored) if not k.startswith(("encoder.", "llm.")))
    if missing:
        raise TrainedPartsError(
            f"{folder / TRAINED_FILE} lacks trained tensors {missing[:3]}; the file is incomplete: rebuild it"
        )
    model.load_state_dict({k: v.float() for k, v in stored.items()}, strict=False)
    own = (folder / "tokenizer.json").is_file()  # written only when training changed the base's
    return model.eval(), ChatTokenizer.from_pretrained(folder) if own else base_tokenizer
