"""Speech emotion recognition (SER) scores of a system on a manifest: accuracy, macro-F1, confusion.

Two ways to read a system's emotion, scored side by side:
- `head`: the emotion the system reports with its reply (`Reply.emotion`: BLSP-Emo's emotion
  head, cascade-ser's classifier). Systems that report none have no head score.
- `instruction`: the system's free-text answer to the SER instruction under the plain system
  prompt, the paper's protocol (docs/paper.md §2.1, §2.2, Table 1), with the label parsed from the
  text by `parse_emotion`. An answer naming no label, or several, is counted as unparseable and
  as wrong. End-to-end systems hear the speech; cascades read what their ASR (and classifier)
  made of it, as the paper's Whisper+LLM row does.

The headline `accuracy`/`macro_f1`/`n`/`confusion` are the instruction scores, the one protocol
every system can follow, so systems compare on equal terms; `--scorer head` picks the other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from blsp_emo.audio import AudioError, load_audio
from blsp_emo.decoding.generation import GenerationOptions, decode, new_cache
from blsp_emo.emotion import EMOTIONS, parse_emotion
from blsp_emo.metrics import label_scores
from blsp_emo.model.processor import build_prompt
from blsp_emo.prompts import SER_INSTRUCTION, SYSTEM_PLAIN, Speech, Turn, instruction_pieces
from blsp_emo.systems.base import SpokenDialogueSystem
from blsp_emo.systems.blsp import BlspSystem
from blsp_emo.systems.cascade import CascadeSystem

SCORERS = ("instruction", "head")
MAX_SKIPPED_SHOWN = 5


def read_ser_manifest(path: str | Path) -> Iterator[tuple[str, str, str | None]]:
    """(audio path, emotion, voice or None) per line; relative audio paths are relative to the manifest."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio, emotion = row["audio"], row.get("emotion")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: expected a JSON object with `audio` and `emotion` ({e})") from e
            if emotion not in EMOTIONS:
                raise ValueError(
                    f"{path}:{number}: emotion {emotion!r} is not one of {EMOTIONS}; an SER manifest labels every clip"
                )
            voice = row.get("voice")  # `train synth` names the speaker; other manifests may not
            yield str(path.parent / Path(audio).expanduser()), emotion, voice if isinstance(voice, str) else None


def answer_instruction(
    system: SpokenDialogueSystem, audio: np.ndarray, instruction: str, heard_as: Turn, options: GenerationOptions
) -> str | None:
    """The system's answer to `instruction` about one clip, or None if it has no LLM to ask.

    `heard_as` is the user turn as the system understood it (transcript, emotion), for cascades.
    """
    if isinstance(system, BlspSystem):
        model, tokenizer = system.model, system.tokenizer
        prompt = build_prompt(
            tokenizer, instruction_pieces(SYSTEM_PLAIN, instruction, Speech(0)), [audio], model.config
        )
        with torch.inference_mode():
            speech = model.encode_speech(prompt.input_features, prompt.frame_counts)
            ids = list(model.generate_stream(prompt, speech, options, tokenizer.stop_ids, seed=0))
        return tokenizer.decode(ids).strip()
    if isinstance(system, CascadeSystem):
        # What its LLM reads for this turn: the transcript, and cascade-ser's emotion in the system prompt.
        tokenizer, llm = system.tokenizer, system.llm
        pieces = instruction_pieces(system.told(SYSTEM_PLAIN, heard_as), instruction, heard_as.text)
        ids = torch.tensor([tokenizer.encode_pieces(pieces).input_ids])
        with torch.inference_mode():
            cache = new_cache(llm)
            logits = llm(input_ids=ids.to(llm.device), past_key_values=cache, use_cache=True, logits_to_keep=1).logits[
                :, -1
            ]
            return tokenizer.decode(list(decode(llm, logits, cache, options, tokenizer.stop_ids, 0))).strip()
    return None


@dataclass
class _Collected:
    truth: list[str] = field(default_factory=list)
    voices: list[str | None] = field(default_factory=list)
    head: list[str | None] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def evaluate_ser(
    system: SpokenDialogueSystem, manifest: str | Path, max_new_tokens: int = 128, scorer: str = "instruction"
) -> dict:
    """SER scores of `system` on `manifest` (JSON lines with `audio` and `emotion`), greedy.

    Returns the headline scores of `scorer` at the top level, both scorers under `head` and
    `instruction` (None where the system cannot be read that way), and the clips skipped as
    unreadable. Where the manifest names each clip's `voice`, `by_voice` is the headline scorer's
    accuracy per voice (held-out voices differ most in how well they are heard).
    """
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")
    options = GenerationOptions(greedy=True, max_new_tokens=max_new_tokens, seed=0)
    got = _Collected()
    for path, emotion, voice in read_ser_manifest(manifest):
        try:
            audio = load_audio(path, max_seconds=system.window_seconds)
        except AudioError as e:
            got.skipped.append(str(e))
            continue
        # One token is enough to read what the system heard; the reply itself is not scored.
        reply = system.respond(audio, options=GenerationOptions(greedy=True, max_new_tokens=1, seed=0))
        heard_as = Turn("user", reply.transcript or "", None, reply.emotion)
        got.truth.append(emotion)
        got.voices.append(voice)
        got.head.append(reply.emotion)
        got.answers.append(answer_instruction(system, audio, SER_INSTRUCTION, heard_as, options))
    return _summary(system.name, manifest, scorer, got)


def _summary(name: str, manifest, scorer: str, got: _Collected) -> dict:
    has_head = any(p is not None for p in got.head)
    has_answers = bool(got.answers) and all(a is not None for a in got.answers)
    scores = {
        "head": asdict(label_scores(got.truth, got.head, EMOTIONS)) if has_head else None,
        "instruction": asdict(label_scores(got.truth, [parse_emotion(a) for a in got.answers], EMOTIONS))
        if has_answers
        else None,
    }
    if scores[scorer] is None:  # the other reading, if the system has it
        scorer = "head" if scorer == "instruction" else "instruction"
    headline = scores[scorer]
    if headline is None:
        headline, scorer = asdict(label_scores(got.truth, [None] * len(got.truth), EMOTIONS)), "none"
    top = {k: headline[k] for k in ("accuracy", "macro_f1", "n", "confusion")}
    skipped = {"count": len(got.skipped), "first": got.skipped[:MAX_SKIPPED_SHOWN]}
    predicted = (
        got.head if scorer == "head" else [parse_emotion(a) for a in got.answers] if scorer == "instruction" else None
    )
    return {
        "task": "ser",
        "system": name,
        "manifest": str(manifest),
        "scorer": scorer,
        **top,
        **scores,
        "by_voice": _by_voice(got.truth, predicted, got.voices),
        "skipped": skipped,
    }


def _by_voice(truth: list[str], predicted: list[str | None] | None, voices: list[str | None]) -> dict | None:
    """{voice: {"accuracy", "n"}} in voice order, or None when the clips name no voice (or nothing was read)."""
    if predicted is None or not any(voices):
        return None
    groups: dict[str, list[bool]] = {}
    for t, p, v in zip(truth, predicted, voices):
        groups.setdefault(v or "(unnamed)", []).append(t == p)
    return {v: {"accuracy": sum(hits) / len(hits), "n": len(hits)} for v, hits in sorted(groups.items())}


def plot_confusion(confusion: dict[str, dict[str, int]], path: str | Path) -> bool:
    """Write the confusion matrix as a PNG (Pillow, which Gradio installs); False if unavailable."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return False
    labels = list(confusion)
    cell, margin = 64, 90
    size = margin + cell * len(labels)
    image = Image.new("RGB", (size, size + 20), "white")
    draw = ImageDraw.Draw(image)
    for i, true in enumerate(labels):
        row_total = max(1, sum(confusion[true].values()))
        draw.text((4, margin + i * cell + cell // 2 - 6), true, fill="black")
        draw.text((margin + i * cell + 4, margin - 20), true, fill="black")  # the same label as a column
        for j, pred in enumerate(labels):
            count = confusion[true][pred]
            shade = int(255 * (1 - count / row_total))  # darker = larger share of the true class
            box = [margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1, margin + (i + 1) * cell - 1]
            draw.rectangle(box, fill=(shade, shade, 255), outline="gray")
            draw.text(
                (box[0] + cell // 2 - 6, box[1] + cell // 2 - 6), str(count), fill="black" if shade > 110 else "white"
            )
    draw.text((margin, 8), "rows: true emotion, columns: predicted", fill="black")
    image.save(str(path), format="PNG")
    return True
