"""`python -m train demo` at CI size, on tiny bases written here (a random Whisper, a tiny chat LM)."""

import json
from pathlib import Path

import pytest
import soundfile as sf

import tiny
from blsp_emo.emotion import EMOTIONS
from train.demo_world.bases_build import SCALES, build_world


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bases")
    tiny.write_bases(folder, chat_lm=True)
    return folder


@pytest.mark.slow
@pytest.mark.build
def test_the_world_builds_on_given_bases_and_resumes(bases, tmp_path, monkeypatch):
    monkeypatch.setenv("BLSP_EMO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    work, scale = Path("work"), SCALES["ci"]  # relative, as `--work runs/world` is
    lines = []
    parts = build_world(work, scale, str(bases / "whisper"), str(bases / "llm"), log=lines.append)

    rows = [json.loads(line) for line in parts["train"].read_text().splitlines()]
    assert rows and all("acoustics" in r for r in rows)
    for r in rows:  # every clip recorded through its own chain, at the chain's rate
        assert sf.info(parts["train"].parent / r["audio"]).samplerate == r["acoustics"]["sample_rate"]
    for name in ("blsp-emo", "blsp"):
        training = json.loads((parts[name] / "training.json").read_text())
        assert training["steps"] == (scale.stage2_steps if name == "blsp-emo" else scale.stage1_steps)
    config = json.loads((parts["blsp-emo"] / "config.json").read_text())
    assert config["lora_rank"] > 0 and config["encode_full_window"] is False
    assert set(config["bases"]) == {"encoder", "llm"}  # the composite names what it was built on
    chat = (work / "labels_stage2_chat" / "chat_0_1_clean.jsonl").read_text().splitlines()
    assert chat and all(json.loads(line)["audio_instruction"] == "" for line in chat)  # stage 2: chat layout
    assert any(line.startswith("[demo] clean labels_stage2_chat:") and "for tone alone" in line for line in lines)
    assert (parts["ser"] / "config.json").is_file()

    # The bundle keeps what training changed, names its bases, and every system loads from it.
    from train.demo_world.bases_build import finish_world

    report = finish_world(work, parts, Path("bundle"), scale, real=None, log=lines.append)
    full = sum(f.stat().st_size for f in parts["blsp-emo"].glob("*.safetensors"))
    assert 0 < report["bundle_bytes"]["blsp-emo"] < full / 2
    assert json.loads(Path("bundle/bundle.json").read_text())["asr"] == str(bases / "whisper")
    by_set = {}
    for r in report["results"]:
        by_set.setdefault(r["group"], set()).add(r["system"])
        assert 0 <= r["accuracy"] <= 1 and r["n"] == scale.eval_clips
    assert set(by_set) >= {"a", "b"} and by_set["a"] == {"blsp-emo", "blsp", "cascade", "cascade-ser"}
    assert by_set["b"] == {"blsp-emo", "cascade-ser"}  # the changed recordings: the systems that hear tone
    results_md = Path("bundle/results.md").read_text()
    assert (
        "| `blsp-emo` | espeak-ng held-out voices |" in results_md
        and "Built by `python -m train demo` in" in results_md
    )
    quoted = report["quotes"]
    assert [q["how"] for q in quoted].count("typed") == 5 and all(isinstance(q["reply"], str) for q in quoted)
    calibration = json.loads(Path("bundle/blsp-emo/calibration.json").read_text())
    assert calibration["temperature"] > 0  # the page's evidence files come from this build's clips
    assert Path("bundle/neutral_reference.json").is_file() and Path("bundle/lexical_emotion.json").is_file()

    # The evaluation kept each row as it was scored: a rerun on the same bundle scores nothing anew.
    from train.demo_world.judge import ToneJudge
    from train.demo_world.world_eval import build_sets, evaluate_bundle

    sets = build_sets(work, parts["eval_manifest"], work / "sentences_eval.jsonl", None)
    lines.clear()
    judge = ToneJudge.load("bundle/tone_judge.json")
    results, _ = evaluate_bundle(
        Path("bundle"), sets, judge, scale.eval_clips, log=lines.append, keep=work / "eval_results"
    )
    assert results == report["results"] and not [line for line in lines if line.startswith("[world]")]

    # A changed blsp-emo (here its calibration) is scored anew, alone, against the kept references.
    from train.demo_world import world_eval

    calibration["temperature"] *= 2
    Path("bundle/blsp-emo/calibration.json").write_text(json.dumps(calibration))
    lines.clear()
    monkeypatch.setattr(world_eval, "reference_replies", lambda *a, **k: pytest.fail("references made again"))
    evaluate_bundle(Path("bundle"), sets, judge, scale.eval_clips, log=lines.append, keep=work / "eval_results")
    rescored = [line for line in lines if line.startswith("[world]")]
    assert rescored and all(line.startswith("[world] blsp-emo on ") for line in rescored)
    monkeypatch.undo()
    monkeypatch.setenv("BLSP_EMO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    # A rerun finds every step done; only the recording step looks (and keeps every clip).
    lines.clear()
    again = build_world(work, scale, str(bases / "whisper"), str(bases / "llm"), log=lines.append)
    assert again == parts
    assert not [line for line in lines if line.endswith("...") and "recording" not in line]


def test_the_neural_corpus_says_a_seeded_share_of_the_sentences_in_every_tone(tmp_path):
    pytest.importorskip("piper")
    from blsp_emo.tts import piper_problem
    from train.demo_world.bases_build import NEURAL_VOICE, write_neural_corpus
    from train.demo_world.sentences import generate, write_sentences

    if piper_problem():
        pytest.skip(piper_problem())
    sentences = [s for s in generate(40, 0, "train") if s.cue is None][:6]
    write_sentences(sentences, tmp_path / "s.jsonl")
    manifest = write_neural_corpus(tmp_path / "s.jsonl", tmp_path / "a", share=0.5, seed=3)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    said = {r["sentence_id"] for r in rows}
    assert 0 < len(said) < 6 and all(r["voice"] == NEURAL_VOICE for r in rows)
    for sid in said:  # a plain sentence in all five tones
        assert sorted(r["emotion"] for r in rows if r["sentence_id"] == sid) == sorted(EMOTIONS)
    again = write_neural_corpus(tmp_path / "s.jsonl", tmp_path / "b", share=0.5, seed=3)
    assert again.read_text() == manifest.read_text()
    first = rows[0]["audio"]
    assert (tmp_path / "a" / first).read_bytes() == (
        tmp_path / "b" / first
    ).read_bytes()  # the same seed, the same file


@pytest.mark.slow
def test_example_clips_are_named_for_their_speakers_with_the_transcript(tmp_path):
    from train.demo_world.examples import EXAMPLES_FILE, PEOPLE, write_examples
    from train.demo_world.sentences import generate

    entries = write_examples(tmp_path)
    listed = json.loads((tmp_path / EXAMPLES_FILE).read_text())
    assert listed == entries
    speakers = {e["speaker"] for e in entries}
    assert set(PEOPLE) <= speakers
    train_texts = {s.text for s in generate(2000, 0, "train")}
    for e in entries:
        assert (tmp_path / e["file"]).is_file() and e["label"] == f"{e['speaker']}, {e['emotion']}: '{e['text']}'"
        assert e["text"] not in train_texts  # a held-out sentence
    for person in speakers:  # every speaker in all five tones
        assert sorted(e["emotion"] for e in entries if e["speaker"] == person) == sorted(EMOTIONS)


def test_the_chat_teacher_resumes_asking_only_for_replies_not_yet_written(tmp_path, monkeypatch):
    import train.teacher
    from train.demo_world.build_steps import chat_alignment_rows

    manifest = tmp_path / "manifest.jsonl"
    sentences = ["The keys are here.", "The bus is late.", "It rained."]
    rows = [{"audio": f"{i}_{e}.wav", "text": s, "emotion": e} for i, s in enumerate(sentences) for e in EMOTIONS[:2]]
    rows.append(dict(rows[0], audio="again.wav"))  # the same prompt twice is asked once
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    asked = []

    def teacher(llm, tokenizer, prompts):
        asked.extend(map(tuple, prompts))
        return [(f"reply {len(asked) - len(prompts) + i}", False) for i in range(len(prompts))]

    monkeypatch.setattr(train.teacher, "continue_prompts", teacher)
    out = tmp_path / "labels" / "chat_0_1.jsonl"
    chat_alignment_rows(None, tiny.tokenizer(), manifest, out, batch_size=4)
    first = out.read_text()
    assert len(asked) == 6 and len(set(asked)) == 6
    written = [json.loads(line) for line in first.splitlines()]
    assert [w["audio"].rsplit("/", 1)[-1] for w in written] == [r["audio"] for r in rows]
    assert all(w["audio_instruction"] == "" and w["output"].startswith("reply") for w in written)
    assert written[0]["output"] == written[-1]["output"]

    memo = out.with_name("chat_0_1.memo")
    lines = memo.read_text().splitlines()
    memo.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # a stop cut the last line
    asked.clear()
    chat_alignment_rows(None, tiny.tokenizer(), manifest, out, batch_size=4)
    assert len(asked) == 1  # only the prompt whose line was cut
    assert [json.loads(line)["audio"] for line in out.read_text().splitlines()] == [w["audio"] for w in written]
    asked.clear()
    chat_alignment_rows(None, tiny.tokenizer(), manifest, out, batch_size=4)
    assert asked == [] and len(memo.read_text().splitlines()) == 6  # the memo stayed whole


def test_a_build_told_to_stop_before_a_step_stops_there_and_runs_it_once_it_is_done(tmp_path):
    from train.demo_world.build_steps import Build, StopBuild

    build, made = Build(tmp_path, SCALES["ci"], stop_before="stage1"), []
    build.step("init", tmp_path / "init", lambda out: made.append(out.mkdir()))
    with pytest.raises(StopBuild, match="stopped before stage1"):
        build.step("stage1", tmp_path / "stage1", lambda out: made.append(out.mkdir()))
    assert len(made) == 1 and not (tmp_path / "stage1").exists()
    (tmp_path / "stage1").mkdir()  # made elsewhere (a GPU): the build goes on past it
    assert build.step("stage1", tmp_path / "stage1", lambda out: made.append(out.mkdir())) == tmp_path / "stage1"
    assert len(made) == 1


def test_a_systems_kept_rows_depend_on_its_own_files_of_the_bundle_only(tmp_path):
    from train.demo_world.world_eval import SYSTEM_FILES, system_digest

    files = {
        "blsp-emo/trained.safetensors": "a",
        "blsp-emo/config.json": "b",
        "blsp/trained.safetensors": "c",
        "ser/trained.safetensors": "d",
        "bundle.json": "e",
        "tone_judge.json": "f",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)

    def digests():
        return {system: system_digest(tmp_path, system, None, 0) for system in SYSTEM_FILES}

    before = digests()
    assert len(set(before.values())) == len(before)  # each system its own name
    assert system_digest(tmp_path, "blsp-emo", 10, 0) != before["blsp-emo"]  # other settings
    changes = {  # a changed file -> the systems whose rows it invalidates
        "blsp-emo/trained.safetensors": {"blsp-emo"},  # the cascades run its LLM with the LoRA out of scope
        "blsp-emo/config.json": {"blsp-emo", "cascade", "cascade-ser", "references"},  # it names the LLM
        "blsp/trained.safetensors": {"blsp"},
        "ser/trained.safetensors": {"cascade-ser"},
        "bundle.json": set(SYSTEM_FILES),
        "tone_judge.json": set(SYSTEM_FILES),
    }
    for name, touched in changes.items():
        (tmp_path / name).write_text(files[name] + "changed")
        after = digests()
        assert {s for s in after if after[s] != before[s]} == touched, name
        (tmp_path / name).write_text(files[name])
    assert digests() == before
    # A file a system reads that is new to the bundle (calibration, say) counts as a change.
    calibration = tmp_path / "blsp-emo" / "calibration.json"
    calibration.write_text(json.dumps({"temperature": 0.8, "command": "calibrate --model runs/world/bundle"}))
    fitted = digests()["blsp-emo"]
    assert fitted != before["blsp-emo"]
    # The command it records names the folder it was fitted in: written elsewhere, the rows stand.
    calibration.write_text(json.dumps({"command": "calibrate --model assets/models", "temperature": 0.8}))
    assert digests()["blsp-emo"] == fitted
    calibration.write_text(json.dumps({"command": "calibrate --model assets/models", "temperature": 0.9}))
    assert digests()["blsp-emo"] != fitted
