"""Real recordings for evaluation: which are listed, how they are drawn, and their re-rendering in each tone."""

import json

import numpy as np
import pytest
import soundfile as sf

from blsp_emo.emotion import EMOTIONS
from train.demo_world.real_speech import JFK_TEXT, choose, read_real, rerender
from train.demo_world.world_eval import agreement, results_table, sample_rows, stray_condolences


def voiced(seconds: float, rate: int, f0: float = 140.0) -> np.ndarray:
    """A buzz with a pitch Praat can follow: what a voice looks like to PSOLA."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sign(np.sin(2 * np.pi * f0 * t)) * np.hanning(t.size)).astype(np.float32)


@pytest.fixture()
def fetched(tmp_path):
    """A folder as `fetch_real_speech.sh` leaves it, in miniature."""
    (tmp_path / "asterisk").mkdir()
    (tmp_path / "asterisk" / "core-sounds-en.txt").write_text(
        "; Core Asterisk Sounds in English\n\nagent-pass: Please enter your password followed by the pound key.\n"
        "no-file: This one has no recording.\nbeep: Beep.\n"
    )
    sf.write(tmp_path / "asterisk" / "agent-pass.wav", voiced(1.5, 8000), 8000)
    sf.write(tmp_path / "asterisk" / "beep.wav", voiced(1.0, 8000), 8000)
    (tmp_path / "pocketsphinx").mkdir()
    (tmp_path / "pocketsphinx" / "librivox.transcription").write_text(
        "<s> he was not an ill disposed young man </s> (reading-0880)\n"
    )
    sf.write(tmp_path / "pocketsphinx" / "reading-0880.wav", voiced(1.5, 16000), 16000)
    (tmp_path / "jfk").mkdir()
    sf.write(tmp_path / "jfk" / "jfk.wav", voiced(2.0, 16000), 16000)
    return tmp_path


def test_only_recordings_with_known_words_are_listed(fetched):
    rows = read_real(fetched)
    by_source = {r["source"]: r for r in rows}
    assert len(rows) == 4 and set(by_source) == {"asterisk", "librivox", "jfk"}
    assert by_source["librivox"]["text"] == "he was not an ill disposed young man"
    assert by_source["jfk"]["text"] == JFK_TEXT
    assert not any("no recording" in r["text"] for r in rows)  # listed without a file: left out


def test_a_draw_takes_every_source_in_turn_and_skips_short_prompts(fetched):
    rows = read_real(fetched)
    drawn = choose(rows, 3, seed=1)
    assert {r["source"] for r in drawn} == {"asterisk", "librivox", "jfk"}
    assert all(len(r["text"].split()) >= 4 for r in drawn)  # "Beep." is too short to judge a reply by
    assert choose(rows, 3, seed=1) == drawn


def test_each_recording_is_re_rendered_in_every_tone_at_its_own_rate(fetched, tmp_path):
    rows = choose(read_real(fetched), 2, seed=0)
    manifest = rerender(rows, tmp_path / "out", seed=0)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(lines) == 2 * len(EMOTIONS)
    for row in rows:
        mine = [line for line in lines if line["text"] == row["text"]]
        assert sorted(line["emotion"] for line in mine) == sorted(EMOTIONS)
        rate = sf.info(row["audio"]).samplerate
        durations = {}
        for line in mine:
            info = sf.info(tmp_path / "out" / line["audio"])
            assert info.samplerate == rate
            durations[line["emotion"]] = info.duration
        assert durations["sad"] > durations["neutral"] > durations["angry"]  # the table's rates


def test_held_out_rows_are_drawn_evenly_over_the_emotions(tmp_path):
    (tmp_path / "wav").mkdir()
    rows = [{"audio": f"wav/{i}.wav", "text": "t", "emotion": EMOTIONS[i % 5]} for i in range(40)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = sample_rows(tmp_path / "m.jsonl", 10, seed=0)
    assert sorted(r["emotion"] for r in drawn) == sorted(EMOTIONS * 2)
    assert all(r["audio"].startswith(str(tmp_path)) for r in drawn)  # absolute: any working folder


def test_semantic_agreement_is_the_mean_cosine_of_unit_vectors():
    import torch

    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}
    embed = lambda texts: torch.tensor([vectors[t] for t in texts])  # noqa: E731
    assert agreement(["a", "c"], ["a", "b"], embed) == pytest.approx((1.0 + 0.8) / 2)


def test_the_table_counts_condolences_only_where_no_loss_was_named():
    replies = ["I'm sorry for your loss.", "I'm sorry for your loss.", "Where is it?", "My condolences."]
    said = ["The keys are here.", "My cat died today.", "The keys are here.", "It is at the desk."]
    assert stray_condolences(replies, said) == 0.5
    row = {"system": "blsp-emo", "set": "s", "group": "a", "accuracy": 0.5, "macro_f1": 0.4, "n": 4}
    row |= {"wer": None, "reply_emotion_match": 0.25, "semantic_agreement": 0.3, "stray_condolences": 0.5}
    kept_before = {**row, "system": "blsp"}
    del kept_before["stray_condolences"]  # a row kept from before the column: shown as not scored
    table = results_table([row, kept_before], judge_accuracy=0.4)
    assert "| `blsp-emo` | s | — | 25.0 % | 0.300 | 50.0 % |" in table
    assert "| `blsp` | s | — | 25.0 % | 0.300 | — |" in table


def test_the_reply_probe_counts_each_reply_rule_and_refuses_a_bad_sample(tmp_path, capsys):
    from train.__main__ import main
    from train.clean import rejection_shares

    replies = ["I'm sorry for your loss.", "The keys are here.", "Where are they?", "As an AI, I can't."]
    said = ["The keys are here."] * 4
    assert rejection_shares(replies, said) == {"condolence_without_loss": 0.25, "echo": 0.25, "speaks_as_a_model": 0.25}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"audio": str(corrupt), "text": "t", "emotion": "sad"}) + "\n")
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text(json.dumps({"audio": str(corrupt), "emotion": "sad"}) + "\n")
    for spec, says in (
        (str(manifest), "PATH:N"),
        (f"{manifest}:0", "PATH:N"),
        (f"{tmp_path}/none.jsonl:5", "does not exist"),
        (f"{manifest}:5", "has no clips"),
        (f"{bad}:1", "corrupt.wav"),
        (f"{no_text}:1", "no 'text'"),
    ):
        assert main(["reply-probe", "--model", str(tmp_path), "--manifest", spec]) == 2
        assert says in capsys.readouterr().out
