"""The evidence behind a Talk turn's emotion, under its five probabilities: unsure or not, whether the
words and the tone disagree, and the prosody against the training voices' neutral speech.

It is read where the models run (`blsp_emo.serving.evidence`: in a model worker, or in the app's
process with `--workers 0`) once the reply is done, so it never delays the reply or its voice; what
comes back is a plain dict, rendered here as Markdown. A failure is one line in its place.

`Read` is what the page is given to read it: `EvidenceReader.read` or `WorkerPool.evidence`.
"""

from __future__ import annotations

import html
import traceback
from collections.abc import Callable, Mapping

import numpy as np

from blsp_emo.systems.base import Reply, SpokenDialogueSystem

Read = Callable[[SpokenDialogueSystem, np.ndarray, Mapping[str, float], str | None], dict]

PENDING = "🔎 *Why this emotion: measured once the reply is written…*"
_FELT = {"surprise": "surprised"}  # "the voice sounds surprised", not "surprise"
_SHOWN_WORDS = 80  # characters of the transcript quoted beside the flag


def pending(read: Read | None, system: SpokenDialogueSystem, clip: np.ndarray | None, reply: Reply) -> str:
    """What the evidence's place says while the reply is written: `PENDING` when the turn gets evidence
    (a spoken clip, a system that hears emotion, scores heard), else nothing."""
    hears = read is not None and clip is not None and system.emotion_source is not None
    return PENDING if hears and reply.emotion_scores else ""


def fetch(read: Read, system: SpokenDialogueSystem, clip: np.ndarray, reply: Reply) -> str:
    """The turn's evidence as Markdown; a failure to read it is one line, and the turn stands."""
    try:
        found = read(system, clip, dict(reply.emotion_scores), reply.transcript)
    except Exception as e:  # noqa: BLE001 -- a lost worker, a bug: said in one line, logged here
        traceback.print_exc()
        found = {"error": f"{type(e).__name__}: {e}"}
    return render(found)


def render(found: Mapping) -> str:
    """Markdown for an `EvidenceReader.read` dict: the sureness, the words/tone line, then the prosody."""
    if "error" in found:
        why = html.escape(str(found["error"]), quote=False)
        return f"🔎 The evidence behind the emotion could not be read this turn ({why}); the emotion above stands."
    top = [_sureness(found["sureness"]), _words_tone(found.get("words_tone"), found.get("words_note"))]
    lines = "  \n".join(line for line in top if line)
    heading = "Against neutral speech of the training voices:" if found["comparisons"] else "Measured in your clip:"
    prosody = "\n".join(f"- {html.escape(line, quote=False)}" for line in found["prosody_lines"])
    return f"{lines}\n\n{heading}\n\n{prosody}" if prosody else lines


def _percent(p: float) -> str:
    return f"{round(100 * p)} %"


def _sureness(sure: Mapping) -> str:
    heard = f"{_percent(sure['probability'])} {sure['emotion']}"
    if sure["threshold"] is None:  # no calibration file: never marked unsure
        return f"**{heard}**"
    if sure["unsure"]:
        return (
            f"🤔 **Unsure: {heard}.** Below {_percent(sure['threshold'])} the model is often wrong; "
            "it may be another emotion."
        )
    return f"✅ **Sure: {heard}** (unsure below {_percent(sure['threshold'])})"


def _words_tone(flag: Mapping | None, note: str | None) -> str:
    if flag is None:
        return f"ℹ️ {html.escape(note, quote=False)}" if note else ""
    words, voice = _FELT.get(flag["words"], flag["words"]), _FELT.get(flag["voice"], flag["voice"])
    said = flag["transcript"]
    quoted = html.escape(said if len(said) <= _SHOWN_WORDS else said[: _SHOWN_WORDS - 1] + "…", quote=False)
    if flag["disagree"]:
        return f"⚠️ **The words are {words}, the voice sounds {voice}.** (words: “{quoted}”)"
    return f"🟰 The words and the voice agree: both {voice}. (words: “{quoted}”)"
