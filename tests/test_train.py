"""The train/ pipeline on a tiny model: teacher -> clean -> stage1 -> stage2 -> `--model` loads it.

Properties, not golden numbers: each stage changes exactly its declared parts, its loss falls on
a fixed batch, a killed run resumes to the same weights and optimizer state, bad clips are
dropped and reported, and the released recipe's numbers and prompts are what the stages hold.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import soundfile as sf
import torch

import tiny
from blsp_emo.emotion import EMOTIONS
from blsp_emo.model.checkpoint import load_model, save_model
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.prompts import STAGE1_INSTRUCTION, STAGE2_TEACHER_INSTRUCTION
from train import loop
from train.__main__ import main
from train.clean import RULES, clean, rejection
from train.data import Collator, DataLimits, ManifestDataset
from train.loop import RunConfig
from train.schedule import lr_factor
from train.stages import STAGES, Stage, apply_stage, init_model, parameter_groups, with_encoder
from train.teacher import Shard, generate_teacher_outputs

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "I got the letter from the office today.",
    "That sounds wonderful, tell me more!",
    "It must be hard for you.",
    "I'm sorry to hear that.",
]
# A fixed batch: every row in one batch, in file order, for a few dozen steps.
FIXED_BATCH = [
    "--batch-size",
    "4",
    "--grad-accum",
    "1",
    "--no-shuffle",
    "--warmup-steps",
    "0",
    "--log-steps",
    "1",
]


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _state(folder: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(str(folder))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    """Top-level parts (adapter, lora, ...) with a tensor that differs."""
    return {k.split(".")[0] for k in before if k in after and not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine: a second torch thread mostly waits for the busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tokenizer):
    """Clips, an ASR manifest (no emotion), an SER manifest, and a stage-1 init model folder."""
    root = tmp_path_factory.mktemp("train")
    rows = []
    for i, (text, emotion) in enumerate(zip(TEXTS, EMOTIONS)):
        sf.write(root / f"clip{i}.wav", tiny.tone(1.2 + 0.5 * i, freq=150 + 80 * i), 16000)
        rows.append({"audio": f"clip{i}.wav", "text": text, "emotion": emotion})
    _write_manifest(root / "asr.jsonl", [{"audio": r["audio"], "text": r["text"]} for r in rows])
    _write_manifest(root / "ser.jsonl", rows)
    save_model(_init_model(tokenizer), tokenizer, root / "init")
    return root


def _init_model(tokenizer) -> BlspEmoModel:
    """A tiny stage-1 starting point with a 3 s window (the clips are shorter), cheaper than tiny's 10 s."""
    encoder = tiny.encoder_config()
    encoder.max_source_positions = 150
    torch.manual_seed(0)
    config = BlspEmoConfig(encoder, tiny.llm_config(len(tokenizer.hf)), adapter_inner_dim=16, lora_rank=0)
    model = BlspEmoModel(config)
    # A random LLM at the usual 0.02 init greedily repeats "\n" whatever it reads; larger weights
    # make it continue each transcript differently, so the teacher outputs are worth learning.
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embed" in name else 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def stage1_data(work):
    assert (
        main(
            [
                "teacher",
                "--stage",
                "stage1",
                "--manifest",
                str(work / "asr.jsonl"),
                "--model",
                str(work / "init"),
                "--out-dir",
                str(work / "labels1"),
            ]
        )
        == 0
    )
    out = work / "labels1" / "asr_0_1.jsonl"
    # One refusal, as the 7B chat model sometimes writes, to be cleaned away.
    refusal = {**_lines(out)[0], "output": "I'm sorry, but I cannot continue this."}
    with out.open("a") as f:
        f.write(json.dumps(refusal) + "\n")
    return out


@pytest.fixture(scope="module")
def stage1_model(work, stage1_data):
    clean([stage1_data])
    assert (
        main(
            [
                "stage1",
                "--manifest",
                str(work / "labels1" / "asr_0_1_clean.jsonl"),
                "--init",
                str(work / "init"),
                "--output",
                str(work / "stage1"),
                "--max-steps",
                "40",
                "--lr",
                "3e-3",
                *FIXED_BATCH,
            ]
        )
        == 0
    )
    return work / "stage1"


@pytest.fixture(scope="module")
def stage2_model(work, stage1_model):
    assert (
        main(
            [
                "teacher",
                "--stage",
                "stage2",
                "--manifest",
                str(work / "ser.jsonl"),
                "--model",
                str(work / "init"),
                "--out-dir",
                str(work / "labels2"),
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "stage2",
                "--manifest",
                str(work / "labels2" / "ser_0_1.jsonl"),
                "--init",
                str(stage1_model),
                "--output",
                str(work / "stage2"),
                "--max-steps",
                "20",
                "--lr",
                "1e-2",
                "--lora-rank",
                "4",
                *FIXED_BATCH,
            ]
        )
        == 0
    )
    return work / "stage2"


def _losses(folder: Path, name: str) -> list[float]:
    return [record[name] for record in _lines(folder / "log.jsonl")]


# --- the pipeline ---------------------------------------------------------------------------------


def test_teacher_writes_continuations_with_the_stage_prompts(work, stage1_data, stage2_model):
    rows = _lines(stage1_data)[:4]
    assert [r["text"] for r in rows] == TEXTS
    assert all(r["instruction"] == STAGE1_INSTRUCTION and r["emotion"] == "" for r in rows)
    assert all(isinstance(r["early_stop"], bool) and r["output"] for r in rows)
    assert len({r["output"] for r in rows}) > 1  # continues each transcript, not one fixed string
    emotional = _lines(work / "labels2" / "ser_0_1.jsonl")
    assert [r["instruction"] for r in emotional] == [STAGE2_TEACHER_INSTRUCTION.format(emotion=e) for e in EMOTIONS[:4]]
    assert [r["emotion"] for r in emotional] == list(EMOTIONS[:4])


def test_stage1_trains_only_the_adapter_and_its_kl_falls(work, stage1_model):
    assert _changed(_state(work / "init"), _state(stage1_model)) == {"adapter"}
    kl = _losses(stage1_model, "response_kl")
    assert len(kl) == 40 and kl[-1] < 0.7 * kl[0], kl
    report = json.loads((stage1_model / "training.json").read_text())["data"][0]
    assert report["kept"] == 4 and report["dropped"] == {}  # the refusal was cleaned before


def test_stage2_trains_adapter_lora_and_head_and_its_losses_fall(stage1_model, stage2_model):
    before, after = _state(stage1_model), _state(stage2_model)
    assert _changed(before, after) == {"adapter", "emotion_head"}
    lora = [k for k in after if k.startswith("lora.")]
    assert lora and all(k not in before for k in lora)
    assert any(after[k].abs().sum() > 0 for k in lora if "lora_B" in k)  # B starts at zero and moved
    ce, er = _losses(stage2_model, "response_ce"), _losses(stage2_model, "input_er")
    # The head only sees the mean of each clip's adapter output, and four tones differ little.
    assert ce[-1] < 0.7 * ce[0] and er[-1] < 0.9 * er[0], (ce, er)


@pytest.mark.server
def test_the_result_loads_with_model(work, stage2_model):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "blsp_emo",
            "respond",
            str(work / "clip0.wav"),
            "--model",
            str(stage2_model),
            "--json",
            "--greedy",
            "--max-new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["emotion"] in EMOTIONS and set(reply["emotion_scores"]) == set(EMOTIONS)


# --- teacher: shards and resume -------------------------------------------------------------------


def test_teacher_resumes_after_the_last_complete_line_and_shards_cover_the_manifest(work, tmp_path):
    model, tok = load_model(str(work / "init"))
    stage, manifest = STAGES["stage1"], work / "asr.jsonl"
    first = generate_teacher_outputs(model.llm, tok, stage, manifest, tmp_path / "a", batch_size=4)
    full = (tmp_path / "a" / "asr_0_1.jsonl").read_text()
    assert first["written"] == 4 and first["resumed_after"] == 0
    lines = full.splitlines(keepends=True)
    (tmp_path / "a" / "asr_0_1.jsonl").write_text("".join(lines[:2]) + lines[2][:10])  # killed mid-line
    again = generate_teacher_outputs(model.llm, tok, stage, manifest, tmp_path / "a", batch_size=1)
    assert again["resumed_after"] == 2 and again["written"] == 2
    assert (tmp_path / "a" / "asr_0_1.jsonl").read_text() == full  # left-padded batches = one by one
    shards = [generate_teacher_outputs(model.llm, tok, stage, manifest, tmp_path / "b", Shard(i, 2)) for i in (0, 1)]
    assert [Path(s["output"]).name for s in shards] == ["asr_0_2.jsonl", "asr_1_2.jsonl"]
    texts = [r["text"] for s in shards for r in _lines(Path(s["output"]))]
    assert sorted(texts) == sorted(TEXTS)


def test_stage2_teacher_skips_rows_without_an_emotion(work, tmp_path):
    model, tok = load_model(str(work / "init"))
    summary = generate_teacher_outputs(model.llm, tok, STAGES["stage2"], work / "asr.jsonl", tmp_path)
    assert summary["written"] == 0 and summary["skipped"] == {"no_emotion": 4}


# --- clean ----------------------------------------------------------------------------------------


def test_clean_counts_each_rule_and_keeps_the_rest(tmp_path):
    outputs = [
        "I'm sorry, but I cannot help with that.",
        "I'm sorry, but I'm not sure what that means.",
        "As an AI language model, I do not have feelings.",
        "Well, i'm sorry, but I think so.",
        "I'm not sure what you mean by that.",
        "and then we went home together.",
        "i'm not sure what you mean, but fine.",  # the last rule is case-sensitive, as released
        "I'm so sorry for your loss. Take care.",
        "As a language model, I cannot feel.",
        "The user's tone is calm.",
        " t ",  # an echo of the text: kept, and counted
    ]
    _write_manifest(tmp_path / "x.jsonl", [{"audio": "a.wav", "text": "t", "output": o} for o in outputs])
    summary = clean([tmp_path])
    assert summary["read"] == 11 and summary["kept"] == 3 and summary["echoes"] == 1
    assert summary["dropped"] == {name: 1 for name, _ in RULES} and summary["tone_only"] == 0
    assert [r["output"] for r in _lines(tmp_path / "x_clean.jsonl")] == [outputs[5], outputs[6], outputs[10]]
    assert clean([tmp_path])["read"] == 11  # a second run does not clean its own output


@pytest.mark.parametrize(
    ("text", "reply", "rejected"),
    [
        ("The package is at reception.", "I'm sorry for your loss.", True),
        ("The package is at reception.", "Please accept my condolences.", True),
        ("The package is at reception.", "I'm sorry to hear that. Is it late?", False),
        ("My grandmother died last night.", "I'm so sorry for your loss.", False),
        ("I miss my father so much.", "My condolences, that must be hard.", False),
        ("We lost the match.", "Sorry for your loss, there is always next season.", False),
    ],
)
def test_condolences_are_refused_only_for_a_loss_the_message_never_mentions(text, reply, rejected):
    assert (rejection(reply, text) == "condolence_without_loss") is rejected


def test_a_reply_is_refused_for_speaking_as_a_model_or_of_the_user_unless_the_user_was_named():
    said = "The letter is at the front desk."
    for reply in ("Sorry, but as a language model I can't.", "As an AI, I see.", "as a text-based assistant, no"):
        assert rejection(reply, said) == "speaks_as_a_model"
    assert rejection("The user's tone is calm.", said) == "talks_about_the_user"
    assert rejection("The user will join soon, then.", "User will join the conference.") is None
    assert (
        rejection(said, said) is None and rejection(" the letter is at the front desk. ", said, replies=True) == "echo"
    )


def test_replies_keep_a_rejected_reply_clip_for_the_emotion_head(tmp_path):
    rows = [
        {"audio": "a.wav", "text": "The keys are here.", "emotion": "angry", "output": "I'm sorry for your loss."},
        {"audio": "b.wav", "text": "The keys are here.", "emotion": "angry", "output": "Where exactly?"},
        {"audio": "c.wav", "text": "The keys are here.", "output": "I'm sorry for your loss."},  # no emotion
        {"audio": "d.wav", "text": "The keys are here.", "emotion": "sad", "output": "The keys are here."},
    ]
    _write_manifest(tmp_path / "x.jsonl", rows)
    summary = clean([tmp_path], replies=True)
    assert summary["kept"] == 1 and summary["tone_only"] == 2
    assert summary["dropped"] == {"condolence_without_loss": 2, "echo": 1}
    kept = _lines(tmp_path / "x_clean.jsonl")
    assert [(r["audio"], r["output"]) for r in kept] == [("a.wav", None), ("b.wav", "Where exactly?"), ("d.wav", None)]
    assert kept[0]["rejected"] == "condolence_without_loss" and kept[0]["emotion"] == "angry"
    assert clean([tmp_path])["dropped"] == {"condolence_without_loss": 2}  # not replies: an echo stays


# --- data -----------------------------------------------------------------------------------------


def _teacher_row(audio, text="It must be hard for you.", output="and so on.", **extra) -> dict:
    return {"audio": str(audio), "text": text, "output": output, "early_stop": False, **extra}


@pytest.fixture(scope="module")
def bad_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    sf.write(root / "good.wav", tiny.tone(2.0), 16000)
    sf.write(root / "short.wav", tiny.tone(0.5), 16000)
    sf.write(root / "long45.wav", tiny.tone(45.0), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    return root


def test_dataset_drops_and_counts_what_cannot_train(bad_clips, tokenizer):
    rows = [
        _teacher_row(bad_clips / "good.wav"),  # stage-1 style: no emotion at all
        _teacher_row(bad_clips / "good.wav", emotion="sad"),
        _teacher_row(bad_clips / "missing.wav"),
        _teacher_row(bad_clips / "corrupt.wav"),
        _teacher_row(bad_clips / "short.wav"),
        _teacher_row(bad_clips / "long45.wav"),
        _teacher_row(bad_clips / "good.wav", text="word " * 300),
        _teacher_row(bad_clips / "good.wav", output="", early_stop=True),
    ]
    manifest = _write_manifest(bad_clips / "rows.jsonl", rows)
    dataset = ManifestDataset([manifest], STAGES["stage2"], tokenizer, DataLimits(max_seconds=10.0), shuffle=False)
    examples = list(dataset)
    assert [e.emotion for e in examples] == [-100, EMOTIONS.index("sad")]  # unlabeled rows train too
    assert dataset.report.kept == 2
    assert dict(dataset.report.dropped) == {
        "missing_file": 1,
        "unreadable": 1,
        "too_short": 1,
        "too_long": 1,
        "too_many_tokens": 1,
        "no_target": 1,
    }
    assert "missing.wav" in dataset.report.examples["missing_file"][0]
    batch = Collator(STAGES["stage1"], tokenizer, tiny.model(lora_rank=0, tok=tokenizer)[0].config)(examples)
    assert batch.training.text is not None and batch.training.speech.labels.shape[0] == 2
    assert int((batch.training.speech.labels != -100).sum()) == int((batch.training.text.labels != -100).sum())


def test_a_row_without_a_reply_teaches_stage_2_its_tone_and_stage_1_nothing(bad_clips, tokenizer):
    rows = [
        _teacher_row(bad_clips / "good.wav", emotion="angry", output=None),
        _teacher_row(bad_clips / "good.wav", emotion="sad"),
    ]
    manifest = _write_manifest(bad_clips / "tone_only.jsonl", rows)
    stage1 = ManifestDataset([manifest], STAGES["stage1"], tokenizer, shuffle=False)
    assert len(list(stage1)) == 1 and dict(stage1.report.dropped) == {"no_target": 1}
    examples = list(ManifestDataset([manifest], STAGES["stage2"], tokenizer, shuffle=False))
    assert [e.emotion for e in examples] == [EMOTIONS.index("angry"), EMOTIONS.index("sad")]
    model = tiny.model(tok=tokenizer)[0]
    batch = Collator(STAGES["stage2"], tokenizer, model.config)(examples).training
    assert bool((batch.speech.labels[0] == -100).all()) and bool((batch.speech.labels[1] != -100).any())
    alone = Collator(STAGES["stage2"], tokenizer, model.config)(examples[:1]).training
    out = model(alone, losses=("response_ce", "input_er"))
    losses = {name: loss.item() for name, loss in out.losses.items()}
    assert losses["response_ce"] == 0.0 and losses["input_er"] > 0.0  # no nan
    out.loss.backward()
    assert model.emotion_head.weight.grad is not None and torch.isfinite(model.emotion_head.weight.grad).all()
    lora = [p for name, p in model.named_parameters() if "lora" in name]
    assert lora and all(p.grad is not None for p in lora)  # in the graph, as DDP needs, with nothing to learn


def test_rows_without_a_reply_skip_the_llm_and_change_no_loss_or_gradient(bad_clips, tokenizer):
    from blsp_emo.model.model import input_er, response_ce

    rows = [
        _teacher_row(bad_clips / "good.wav", emotion="sad", output="That must be hard."),
        _teacher_row(bad_clips / "good.wav", emotion="angry", output=None),
        _teacher_row(bad_clips / "good.wav", emotion="happy", output="How lovely, tell me more!"),
    ]
    manifest = _write_manifest(bad_clips / "mixed_tone.jsonl", rows)
    examples = list(ManifestDataset([manifest], STAGES["stage2"], tokenizer, shuffle=False))
    model = tiny.model(tok=tokenizer)[0]
    batch = Collator(STAGES["stage2"], tokenizer, model.config)(examples).training
    calls = []
    model.llm.register_forward_hook(
        lambda _m, args, kwargs, _out: calls.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True
    )

    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.adapter.parameters()] + [model.emotion_head.weight.grad.clone()]

    out = model(batch, losses=("response_ce", "input_er"))
    assert calls == [2]  # the LLM read the two rows with a reply, not the third
    ours = gradients(out.loss)
    speech = model.encode_speech(batch.speech.input_features, batch.speech.frame_counts)
    logits = model.speech_forward(batch.speech, speech).logits  # every row, as before
    ce, er = response_ce(model, batch, logits, None), input_er(model, batch, None, model.emotion_logits(speech))
    assert torch.allclose(out.losses["response_ce"], ce, atol=1e-5) and torch.allclose(out.losses["input_er"], er)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, gradients(ce + er)))


def test_an_epoch_shuffles_the_whole_manifest_and_ranks_share_it(bad_clips, tokenizer):
    """A manifest ordered corpus by corpus trains mixed from the first step: the order is a
    permutation of every row (not a buffer read in file order), the same on every rank, new each epoch."""
    happy = [_teacher_row(bad_clips / "good.wav", emotion="happy", text=f"happy {i}") for i in range(40)]
    sad = [_teacher_row(bad_clips / "good.wav", emotion="sad", text=f"sad {i}") for i in range(40)]
    manifests = [_write_manifest(bad_clips / "a.jsonl", happy), _write_manifest(bad_clips / "b.jsonl", sad)]

    def texts(rank=0, world=1, epoch=0, start=0):
        dataset = ManifestDataset(manifests, STAGES["stage2"], tokenizer, rank=rank, world_size=world)
        dataset.set_epoch(epoch, start)
        return [e.text_row.input_ids for e in dataset]

    order = texts()
    assert sorted(map(tuple, order)) == sorted(map(tuple, texts(epoch=0)))  # every row once
    assert len(order) == 80 and order == texts()  # seeded
    first = [tokenizer.decode(ids) for ids in order[:10]]
    assert any("sad" in t for t in first) and any("happy" in t for t in first)  # mixed from the start
    assert texts(epoch=1) != order
    halves = texts(rank=0, world=2), texts(rank=1, world=2)
    assert halves[0] == order[0::2] and halves[1] == order[1::2]
    assert texts(start=30) == order[30:]  # a resumed run reads only the rows after its position


def test_warp_augments_each_clip_reproducibly(bad_clips, tokenizer):
    rows = [_teacher_row(bad_clips / "good.wav", emotion="sad"), _teacher_row(bad_clips / "good.wav", emotion="happy")]
    manifest = _write_manifest(bad_clips / "warp.jsonl", rows)
    examples = list(ManifestDataset([manifest], STAGES["stage2"], tokenizer, DataLimits(), shuffle=False))
    config = tiny.model(tok=tokenizer)[0].config
    plain = Collator(STAGES["stage2"], tokenizer, config)(examples).training.speech
    warped = Collator(STAGES["stage2"], tokenizer, config, warp=0.2)(examples).training.speech
    again = Collator(STAGES["stage2"], tokenizer, config, warp=0.2)(examples).training.speech
    assert torch.equal(warped.input_features, again.input_features)  # resumable: drawn from the position
    assert not torch.equal(warped.input_features[0], plain.input_features[0])
    assert not torch.equal(warped.input_features[0], warped.input_features[1])  # same audio, another speaker
    assert torch.equal(warped.input_ids, plain.input_ids) and torch.equal(warped.labels, plain.labels)
    with pytest.raises(ValueError, match="warp must be in"):
        RunConfig(("m",), "i", "o", warp=0.7)


def test_a_manifest_with_a_missing_a_corrupt_and_a_45s_clip_trains_and_reports_them(work, bad_clips, capsys):
    rows = [
        _teacher_row(bad_clips / name) for name in ("good.wav", "missing.wav", "corrupt.wav", "long45.wav", "good.wav")
    ]
    manifest = _write_manifest(bad_clips / "mixed.jsonl", rows)
    out = bad_clips / "run"
    assert (
        main(
            [
                "stage1",
                "--manifest",
                str(manifest),
                "--init",
                str(work / "init"),
                "--output",
                str(out),
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "--grad-accum",
                "1",
            ]
        )
        == 0
    )
    report = json.loads((out / "training.json").read_text())["data"][0]
    assert report["kept"] == 2
    assert report["dropped"] == {"missing_file": 1, "unreadable": 1, "too_long": 1}
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("missing.wav", "corrupt.wav", "long45.wav"))


def test_a_manifest_line_without_teacher_output_is_an_error_naming_the_line(work, capsys):
    code = main(
        ["stage1", "--manifest", str(work / "asr.jsonl"), "--init", str(work / "init"), "--output", str(work / "x")]
    )
    assert code == 2
    assert "asr.jsonl:1: missing keys ['output', 'early_stop']" in capsys.readouterr().err


# --- resume ---------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_weights_and_optimizer_state(work, stage1_model, monkeypatch, tmp_path):
    rows = [
        _teacher_row(work / f"clip{i}.wav", text=t, output=t, emotion=e)
        for i, (t, e) in enumerate(zip(TEXTS, EMOTIONS))
    ]
    manifest = _write_manifest(tmp_path / "m.jsonl", rows)

    def run(output: Path, *extra: str) -> int:
        # Batches of 2 over 4 rows reshuffled each epoch; LoRA dropout draws from the RNG.
        return main(
            [
                "stage2",
                "--manifest",
                str(manifest),
                "--init",
                str(stage1_model),
                "--output",
                str(output),
                "--max-steps",
                "6",
                "--save-steps",
                "3",
                "--batch-size",
                "2",
                "--grad-accum",
                "1",
                "--lora-rank",
                "4",
                "--log-steps",
                "1",
                *extra,
            ]
        )

    assert run(tmp_path / "straight") == 0
    save = loop.save_checkpoint

    def save_then_die(session, state):
        path = save(session, state)
        if state.step == 3:
            raise Killed
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path / "killed")
    assert not (tmp_path / "killed" / "config.json").exists()
    assert run(tmp_path / "killed") == 2  # a fresh run refuses to mix with the killed one's checkpoints
    monkeypatch.setattr(loop, "save_checkpoint", save)
    assert run(tmp_path / "killed", "--resume") == 0

    straight, resumed = tmp_path / "straight", tmp_path / "killed"
    assert [r["step"] for r in _lines(resumed / "log.jsonl")] == [1, 2, 3, 4, 5, 6]
    timeless = [
        [{k: v for k, v in r.items() if k != "s_per_step"} for r in _lines(f / "log.jsonl")]
        for f in (straight, resumed)
    ]
    assert timeless[0] == timeless[1]  # same losses, learning rates and gradient norms at every step
    a, b = _state(straight), _state(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    opt_a = torch.load(straight / "checkpoint-6" / "optimizer.bin", weights_only=True)["state"]
    opt_b = torch.load(resumed / "checkpoint-6" / "optimizer.bin", weights_only=True)["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(
        torch.allclose(opt_a[i][key], opt_b[i][key], atol=1e-6) for i in opt_a for key in ("exp_avg", "exp_avg_sq")
    )
    assert not (resumed / "checkpoint-3").exists()  # save_total_limit 1


# --- stages and schedule --------------------------------------------------------------------------


def test_stages_hold_the_released_recipe():
    s1, s2 = STAGES["stage1"], STAGES["stage2"]
    assert (s1.trainable, s1.losses, s1.lr, s1.warmup_steps) == ({"adapter"}, ("response_kl",), 1e-4, 1000)
    assert (s2.trainable, s2.losses, s2.lr, s2.warmup_steps) == (
        {"adapter", "lora", "emotion_head"},
        ("response_ce", "input_er"),
        2e-5,
        200,
    )
    assert 4 * s1.batch_size * s1.grad_accum == 768 and 4 * s2.batch_size * s2.grad_accum == 128
    assert (s1.weight_decay, s1.max_grad_norm, s1.seed) == (0.05, 1.0, 1)
    assert with_encoder(s2).trainable == s2.trainable | {"encoder"}
    with pytest.raises(ValueError, match="trainable.*subset"):
        Stage(**{**s1.__dict__, "trainable": frozenset({"llm"})})


def test_apply_stage_freezes_everything_else(tokenizer):
    model, _ = tiny.model(lora_rank=4, tok=tokenizer)
    params = apply_stage(model, STAGES["stage2"])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter", "lora", "emotion_head"}
    assert len(params) == sum(p.requires_grad for p in model.parameters())
    no_lora, _ = tiny.model(lora_rank=0, tok=tokenizer)
    with pytest.raises(ValueError, match="trains 'lora' but the model has none"):
        apply_stage(no_lora, STAGES["stage2"])


def test_a_stage_can_train_only_the_encoders_top_layers_at_their_own_rate(tokenizer):
    model, _ = tiny.model(lora_rank=4, tok=tokenizer)
    stage = with_encoder(STAGES["stage2"], layers=1, lr=1e-4)
    params = apply_stage(model, stage)
    top, last = len(model.encoder.layers) - 1, model.encoder.layers[-1]
    learning = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert learning == {f"layers.{top}.{n}" for n, _ in last.named_parameters()} | {
        "layer_norm.weight",
        "layer_norm.bias",
    }
    groups = parameter_groups(model, stage, params)
    encoder = {id(p) for p in model.encoder.parameters()}
    assert [g.get("lr") for g in groups] == [None, 1e-4]
    assert all(id(p) not in encoder for p in groups[0]["params"]) and all(id(p) in encoder for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(params)
    assert len(parameter_groups(model, with_encoder(STAGES["stage2"]), params)) == 1  # one rate: one group

    with pytest.raises(ValueError, match="encoder_layers=3 but the encoder has 2 layers"):
        apply_stage(model, with_encoder(STAGES["stage2"], layers=3))
    with pytest.raises(ValueError, match="add it with `with_encoder`"):
        replace(STAGES["stage2"], encoder_layers=2)
    with pytest.raises(ValueError, match="encoder_layers must be >= 1"):
        with_encoder(STAGES["stage2"], layers=0)
    with pytest.raises(ValueError, match="encoder_lr > 0; got None, 0.0"):  # a zero rate would train nothing
        with_encoder(STAGES["stage2"], lr=0.0)


def test_encoder_options_without_unfreeze_encoder_are_refused(work, capsys):
    out = work / "refused"
    argv = ["stage2", "--manifest", str(work / "ser.jsonl"), "--init", str(work / "init"), "--output", str(out)]
    assert main([*argv, "--encoder-layers", "2"]) == 2
    assert "add --unfreeze-encoder" in capsys.readouterr().err and not out.exists()


def test_init_model_adds_a_fresh_lora_and_keeps_every_stage1_tensor(work):
    model, _ = init_model(work / "init", STAGES["stage2"], lora_rank=4)
    base = _state(work / "init")
    state = model.state_dict()
    assert all(torch.equal(base[k], state[k]) for k in base)
    assert all(not state[k].any() for k in state if k.startswith("lora.") and "lora_B" in k)
    assert model.config.lora_rank == 4


def test_log_warmup_follows_deepspeed_then_decays_linearly_to_zero():
    assert lr_factor(0, 1000, 5000) == 0.0
    assert lr_factor(1, 1000, 5000) == pytest.approx(math.log(2) / math.log(1000))  # a tenth already
    assert lr_factor(999, 1000, 5000) == pytest.approx(1.0, abs=1e-3)
    assert (
        lr_factor(1000, 1000, 5000) == 1.0 and lr_factor(3000, 1000, 5000) == 0.5 and lr_factor(5000, 1000, 5000) == 0.0
    )
    assert lr_factor(100, 1000, 5000, "linear") == 0.1
    with pytest.raises(ValueError, match="warmup_type"):
        lr_factor(0, 10, 100, "cosine")


def test_the_shipped_deepspeed_config_is_the_papers_setup():
    import yaml

    launcher = yaml.safe_load((ROOT / "train/configs/accelerate_deepspeed_zero1.yaml").read_text())
    assert launcher["distributed_type"] == "DEEPSPEED" and launcher["num_processes"] == 4
    ds = json.loads((ROOT / launcher["deepspeed_config"]["deepspeed_config_file"]).read_text())  # the file exists
    assert ds["zero_optimization"]["stage"] == 1 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["gradient_clipping"] == 1.0 and "optimizer" not in ds and "scheduler" not in ds  # ours are used
