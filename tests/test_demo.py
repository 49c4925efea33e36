"""The demo-scale world: corpus formats, the tone judge, the tiny LM, and the whole build at CI size."""

import json
import random

import pytest

from blsp_emo.emotion import EMOTIONS
from blsp_emo.prompts import STAGE2_TEACHER_INSTRUCTION, SYSTEM_EMPATHETIC, told_emotion
from train.demo_world import corpus
from train.demo_world.build_steps import SCALES
from train.demo_world.demo import build_models
from train.demo_world.judge import ToneJudge, fit_with_holdout


def test_corpus_has_every_format_and_tone_follows_the_stated_emotion():
    examples = corpus.build_corpus(
        [("The letter is at the front desk.", None), ("How dare you read my letters?", "angry")]
    )
    assert {e.format for e in examples} == set(corpus.FORMATS)
    for e in examples:
        if e.format in ("continue", "chat", "ser"):  # from words alone: the cue, else neutral
            assert e.emotion == ("angry" if "dare" in e.text else "neutral")
        if e.format == "continue_emotion":
            assert e.instruction == STAGE2_TEACHER_INSTRUCTION.format(emotion=e.emotion)
            assert e.response in corpus.CONTINUATIONS[e.emotion]
        if e.format == "chat_emotion":  # the system prompt exactly as cascade-ser sends it
            assert e.instruction == "" and e.system == told_emotion(SYSTEM_EMPATHETIC, e.emotion)


def test_tone_judge_learns_the_banks_and_round_trips(tmp_path):
    rng = random.Random(0)
    texts, labels = [], []
    for _ in range(60):
        for e in EMOTIONS:
            texts.append(corpus.reply(e, rng) if rng.random() < 0.5 else corpus.continuation(e, rng))
            labels.append(e)
    judge, accuracy = fit_with_holdout(texts, labels)
    assert accuracy > 0.95
    judge.save(tmp_path / "judge.json")
    again = ToneJudge.load(tmp_path / "judge.json")
    assert again.predict(texts[:20]) == judge.predict(texts[:20])


@pytest.mark.slow
@pytest.mark.build
def test_ci_sized_build_runs_the_whole_chain(tmp_path):
    """sentences -> synth -> ASR, SER, LM -> assemble -> teacher -> stage 1 -> teacher -> stage 2 ->
    judge -> evaluation -> bundle; the bundle then loads every system by default layout."""
    from blsp_emo.systems import available_systems, load_system

    out, examples = tmp_path / "models", tmp_path / "examples"
    report = build_models(tmp_path / "work", out, examples, SCALES["ci"], log=lambda line: None)
    assert {r["system"] for r in report["results"]} == set(available_systems())
    for r in report["results"]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["reply_emotion_match"] <= 1 and r["n"] == SCALES["ci"].eval_clips
        assert (r["wer"] is None) == r["system"].startswith("blsp")
    assert json.loads((out / "results.json").read_text())["results"] == report["results"]
    assert "| `blsp-emo` |" in (out / "results.md").read_text()
    clips = sorted(p.name for p in examples.glob("*.wav"))
    assert len(clips) == 10 and all(p.startswith("tone-only_") for p in clips)
    for name in available_systems():
        reply = load_system(name, model=out).respond(examples / clips[0])
        assert reply.done
    # a second run finds every step done and only re-evaluates
    again = build_models(tmp_path / "work", out, examples, SCALES["ci"], log=lambda line: None)
    assert again["ran_now"] == []


def test_readme_block_is_replaced_between_markers(tmp_path):
    from train.demo_world.demo import RESULTS_END, RESULTS_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{RESULTS_START}\nold table\n{RESULTS_END}\nafter\n")
    assert update_readme(readme, "| new |\n")
    assert readme.read_text() == f"# x\n{RESULTS_START}\n| new |\n{RESULTS_END}\nafter\n"
    assert not update_readme(tmp_path / "missing.md", "x")
