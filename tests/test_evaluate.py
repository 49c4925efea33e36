"""`python -m blsp_emo evaluate --task ser`: the scores, both ways of reading emotion, the contract."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
import torch

import tiny
from blsp_emo.__main__ import main
from blsp_emo.audio import SAMPLE_RATE
from blsp_emo.emotion import EMOTIONS
from blsp_emo.evaluate import evaluate_ser, plot_confusion
from blsp_emo.metrics import label_scores
from blsp_emo.prompts import Turn
from blsp_emo.systems.base import Heard, LocalSystem


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only waits on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ser_manifest(tmp_path_factory) -> Path:
    """One clip per emotion, clip i lasting 1 + i/2 seconds, plus an unreadable file."""
    root = tmp_path_factory.mktemp("ser")
    rows = []
    for i, emotion in enumerate(EMOTIONS):
        sf.write(root / f"{emotion}.wav", tiny.tone(1.0 + 0.5 * i, freq=180 + 60 * i), SAMPLE_RATE)
        rows.append({"audio": f"{emotion}.wav", "emotion": emotion, "text": "hello"})
    (root / "broken.wav").write_bytes(b"not audio at all")
    rows.append({"audio": "broken.wav", "emotion": "sad"})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "m.jsonl"


class DurationOracle(LocalSystem):
    """Reports the emotion the fixture encoded in each clip's length: a perfect emotion head."""

    name, description, window_seconds = "oracle", "knows the answer", 30.0

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def _answer(self, turn: Turn, history, options, seed) -> tuple[Heard, Iterator[int]]:
        index = round((turn.audio.size / SAMPLE_RATE - 1.0) * 2)
        return Heard({e: float(i == index) for i, e in enumerate(EMOTIONS)}), iter(())


def test_a_perfect_head_scores_one_and_unreadable_clips_are_skipped(ser_manifest, tokenizer):
    result = evaluate_ser(DurationOracle(tokenizer), ser_manifest)
    assert result["instruction"] is None and result["scorer"] == "head"  # it has no LLM to ask
    assert (result["accuracy"], result["macro_f1"], result["n"]) == (1.0, 1.0, 5)
    assert result["skipped"]["count"] == 1 and "broken.wav" in result["skipped"]["first"][0]


def test_accuracy_per_voice_where_the_manifest_names_voices(ser_manifest, tokenizer, tmp_path):
    assert evaluate_ser(DurationOracle(tokenizer), ser_manifest)["by_voice"] is None  # no voices named
    rows = [json.loads(line) for line in ser_manifest.read_text().splitlines()][: len(EMOTIONS)]
    wrong = [{**r, "emotion": EMOTIONS[(i + 1) % len(EMOTIONS)]} for i, r in enumerate(rows)]  # mislabelled
    voiced = tmp_path / "voiced.jsonl"
    voiced.write_text(
        "".join(
            json.dumps({**r, "audio": str(ser_manifest.parent / r["audio"]), "voice": v}) + "\n"
            for v, group in (("en-us+m3", rows), ("en-029+f5", wrong))
            for r in group
        )
    )
    result = evaluate_ser(DurationOracle(tokenizer), voiced)
    assert result["accuracy"] == 0.5
    assert result["by_voice"] == {"en-029+f5": {"accuracy": 0.0, "n": 5}, "en-us+m3": {"accuracy": 1.0, "n": 5}}


def test_cli_json_contract_is_deterministic_and_plots(ser_manifest, model_dir, tmp_path, capsys):
    args = [
        "evaluate",
        "--task",
        "ser",
        "--manifest",
        str(ser_manifest),
        "--model",
        str(model_dir),
        "--json",
        "--max-new-tokens",
        "8",
        "--plot",
        str(tmp_path / "cm.png"),
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1", "n", "confusion"} <= set(first) and first["n"] == 5
    assert first["scorer"] == "instruction" and set(first["confusion"]) == set(EMOTIONS)
    instruction, head = first["instruction"], first["head"]
    assert 0 <= instruction["unparseable"] <= 5 and head["n"] == 5
    assert sum(sum(row.values()) for row in instruction["confusion"].values()) == 5 - instruction["unparseable"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == first  # greedy: the same answers every run
    from PIL import Image

    assert Image.open(tmp_path / "cm.png").format == "PNG"


def test_an_unknown_label_is_an_error_naming_the_line(tmp_path, model_dir, capsys):
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "emotion": "frustrated"}) + "\n")
    assert main(["evaluate", "--task", "ser", "--manifest", str(tmp_path / "m.jsonl"), "--model", str(model_dir)]) == 2
    assert "m.jsonl:1: emotion 'frustrated'" in capsys.readouterr().err


def test_plot_writes_counts_as_a_png(tmp_path):
    assert plot_confusion(label_scores(["happy", "sad"], ["happy", "happy"], EMOTIONS).confusion, tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"


def test_instruction_answers_are_parsed_from_free_text(ser_manifest, bundle_dir):
    # The cascade asks its text LLM the SER question about the transcript (the paper's
    # Whisper+LLM row): its answers go through the same parser as the end-to-end model's.
    from blsp_emo import load_system

    result = evaluate_ser(load_system("cascade", bundle_dir), ser_manifest, max_new_tokens=4)
    assert result["head"] is None and result["instruction"]["n"] == 5
    assert result["scorer"] == "instruction" and result["accuracy"] == result["instruction"]["accuracy"]
