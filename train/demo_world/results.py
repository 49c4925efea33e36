"""The demo's held-out evaluation (`demo.py`): every system scored on voices and sentences it never
trained on, and the results table that `python -m train demo-scratch` writes to results.md and the README.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

# --- evaluation on held-out voices and sentences ------------------------------------------------


def held_out_rows(manifest: Path, n: int | None) -> list[dict]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if n is None:
        return rows
    stride = max(1, len(rows) // n)
    return rows[::stride][:n]


def evaluate_system(
    system, rows: list[dict], judge, root: Path, max_new_tokens: int = 48, ask_all: bool = True
) -> dict:
    """Emotion accuracy (and where it comes from), macro-F1, WER, reply-emotion match. The SER
    question is asked of every system, or with `ask_all=False` only of those that hear no emotion
    (whose accuracy is their answer's); `ser_answer_accuracy` is then None for the others."""
    from blsp_emo.audio import load_audio
    from blsp_emo.decoding.generation import GenerationOptions
    from blsp_emo.emotion import EMOTIONS, parse_emotion
    from blsp_emo.evaluate import answer_instruction
    from blsp_emo.metrics import error_rate, label_scores, plain_words
    from blsp_emo.prompts import SER_INSTRUCTION, Turn

    greedy = GenerationOptions(greedy=True, max_new_tokens=max_new_tokens, seed=0)
    ask = ask_all or system.emotion_source is None
    truth, heard, answered, replies, said, transcripts = [], [], [], [], [], []
    for row in rows:
        audio = load_audio(root / row["audio"] if not Path(row["audio"]).is_absolute() else row["audio"])
        reply = system.respond(audio, options=greedy)
        truth.append(row["emotion"])
        heard.append(reply.emotion)
        if ask:
            answer = answer_instruction(
                system,
                audio,
                SER_INSTRUCTION,
                Turn("user", reply.transcript or "", None, reply.emotion),
                replace(greedy, max_new_tokens=16),
            )
            answered.append(parse_emotion(answer or ""))
        replies.append(reply.text)
        if reply.transcript is not None:
            said.append(plain_words(row["text"]))
            transcripts.append(plain_words(reply.transcript))
    perceives = any(h is not None for h in heard)
    headline = label_scores(truth, heard if perceives else answered, EMOTIONS)
    match = sum(p == t for p, t in zip(judge.predict(replies), truth)) / len(truth)
    return {
        "system": system.name,
        "emotion_from": system.emotion_source if perceives else "SER answer (words only)",
        "accuracy": headline.accuracy,
        "macro_f1": headline.macro_f1,
        "ser_answer_accuracy": label_scores(truth, answered, EMOTIONS).accuracy if ask else None,
        "wer": error_rate(said, transcripts) if any(said) else None,
        "reply_emotion_match": match,
        "n": len(truth),
        "example_reply": replies[0] if replies else "",
        "replies": replies,
    }


def results_table(results: list[dict], judge_accuracy: float, build_seconds: float) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f} %"

    lines = [
        f"Held-out voices and sentences; built in {build_seconds / 60:.1f} min "
        f"(`python -m train demo-scratch`, {os.cpu_count()} CPU cores).",
        "",
        "| system | emotion from | emotion accuracy | macro-F1 | SER answer accuracy | ASR WER | reply-emotion match |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r['system']}` | {r['emotion_from']} | {pct(r['accuracy'])} | {r['macro_f1']:.3f} | "
            f"{pct(r['ser_answer_accuracy'])} | {pct(r['wer'])} | {pct(r['reply_emotion_match'])} |"
        )
    lines += [
        "",
        f"Reply-emotion match is judged by a tone classifier trained on the teacher's emotion-conditioned "
        f"replies; its own held-out accuracy is {pct(judge_accuracy)}. n = {results[0]['n']} clips per system.",
    ]
    return "\n".join(lines) + "\n"
