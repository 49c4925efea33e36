"""What encoding only the clip's length (instead of the released 30 s window) changes, next to what it saves.

The released model encodes every clip padded to 30 s, and its Whisper encoder attends to the padding.
Clip-length mode (`encoder.py`) skips the padding, so the speech embeddings change; this measures how
much, downstream: the prefill's next-token distribution, the emotion head, and the greedy reply,
next to the encoder time of each mode. On random weights the size of the change says nothing about
the trained 7B model (whose encoder learned what its padding looks like), only that it is not zero.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from blsp_emo.decoding.generation import GenerationOptions
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.processor import build_prompt
from blsp_emo.model.tokenizer import ChatTokenizer
from blsp_emo.prompts import SYSTEM_EMPATHETIC, Turn, chat_pieces


@dataclass(frozen=True)
class WindowResult:
    clip_s: float
    encoder_s_full: float  # median encoder + adapter time, 30 s window
    encoder_s_clip: float  # the same, clip-length mode
    logits_max_abs_diff: float  # next-token logits after the prompt
    logits_rel_diff: float  # ||full - clip|| / ||full||
    next_token_kl: float  # KL(full || clip) of the next-token distribution, nats
    same_next_token: bool
    emotion_max_abs_diff: float  # emotion-head probabilities
    same_greedy_reply: bool
    first_divergence: int | None  # index of the first differing greedy token, None if identical


@contextlib.contextmanager
def window_mode(model: BlspEmoModel, full_window: bool) -> Iterator[None]:
    previous = model.config.encode_full_window
    model.config.encode_full_window = full_window
    try:
        yield
    finally:
        model.config.encode_full_window = previous


@torch.inference_mode()
def _run(model: BlspEmoModel, tokenizer: ChatTokenizer, clip: np.ndarray, new_tokens: int, repeats: int):
    prompt = build_prompt(tokenizer, chat_pieces(SYSTEM_EMPATHETIC, [Turn("user", audio=clip)]), [clip], model.config)
    times = []
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        speech = model.encode_speech(prompt.input_features, prompt.frame_counts)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    logits = model.speech_forward(prompt, speech, logits_to_keep=1).logits[0, -1].float()
    emotion = model.emotion_logits(speech)[0].float().softmax(-1)
    options = GenerationOptions(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, greedy=True, seed=0, stop_repeats=False
    )
    reply = list(model.generate_stream(prompt, speech, options, tokenizer.stop_ids, seed=0))
    return statistics.median(times), logits, emotion, reply


def compare(
    model: BlspEmoModel,
    tokenizer: ChatTokenizer,
    clips: dict[float, np.ndarray],
    new_tokens: int = 32,
    repeats: int = 3,
) -> list[WindowResult]:
    """For each clip: the released full window vs clip-length mode on the same weights."""
    results = []
    for seconds, clip in clips.items():
        with window_mode(model, True):
            t_full, full, emo_full, reply_full = _run(model, tokenizer, clip, new_tokens, repeats)
        with window_mode(model, False):
            t_clip, part, emo_clip, reply_clip = _run(model, tokenizer, clip, new_tokens, repeats)
        kl = torch.sum(full.softmax(-1) * (full.log_softmax(-1) - part.log_softmax(-1))).item()
        diverge = next((i for i, (a, b) in enumerate(zip(reply_full, reply_clip)) if a != b), None)
        results.append(
            WindowResult(
                seconds,
                t_full,
                t_clip,
                (full - part).abs().max().item(),
                ((full - part).norm() / full.norm()).item(),
                max(kl, 0.0),
                int(full.argmax()) == int(part.argmax()),
                (emo_full - emo_clip).abs().max().item(),
                reply_full == reply_clip,
                diverge,
            )
        )
    return results


def format_results(results: Sequence[WindowResult], label: str) -> Iterator[str]:
    yield f"encoder window, {label}: released 30 s window vs clip length (random weights)"
    yield ""
    yield (
        "| clip s | encoder+adapter ms, 30 s window | clip length | saved | next-token KL | logits rel. diff "
        "| same next token | emotion prob. max diff | same greedy reply |"
    )
    yield "|---|---|---|---|---|---|---|---|---|"
    for r in results:
        same = "yes" if r.same_greedy_reply else f"no (from token {r.first_divergence})"
        yield (
            f"| {r.clip_s:g} | {r.encoder_s_full * 1e3:.1f} | {r.encoder_s_clip * 1e3:.1f} | "
            f"{1 - r.encoder_s_clip / r.encoder_s_full:.0%} | {r.next_token_kl:.2e} | {r.logits_rel_diff:.2e} | "
            f"{'yes' if r.same_next_token else 'no'} | {r.emotion_max_abs_diff:.2e} | {same} |"
        )
