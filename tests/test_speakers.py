"""Generated training speakers and accents (`train/demo_world/speakers.py`) and their use by `train synth`."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from blsp_emo.emotion import EMOTIONS
from train.__main__ import main
from train.demo_world import ablate, speakers, synth
from train.demo_world import sentences as sent
from train.demo_world.prosody import Setting, measure, render
from train.demo_world.voices import TRAIN_ACCENTS, Voice, VoiceError, check_voices, is_reserved

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")

TEXT = "The letter is at the front desk."
NEUTRAL = Setting(0, 0, 0, 0, amplitude=60)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("speakers")
    names = speakers.write_speakers(out, 6, seed=0, accents=3)
    return out, names


def _files(out):
    folder = out / speakers.DATA_FOLDER
    paths = sorted([*(folder / "voices" / "!v").glob("spk*"), *(folder / "lang" / "gmw").glob("en-x-acc*")])
    return {p.name: p.read_text() for p in paths}


def test_the_same_seed_writes_the_same_speakers_and_another_seed_others(generated, tmp_path):
    out, names = generated
    assert names == speakers.read_speakers(out) == [f"spk{i:04d}" for i in range(6)]
    assert speakers.generated_accents(out) == ["en-x-acc00", "en-x-acc01", "en-x-acc02"]
    speakers.write_speakers(tmp_path / "again", 6, seed=0, accents=3)
    speakers.write_speakers(tmp_path / "other", 6, seed=1, accents=3)
    assert _files(tmp_path / "again") == _files(out)
    assert _files(tmp_path / "other") != _files(out)


def test_generated_voices_render_as_themselves_and_only_inside_their_data_folder(generated):
    out, names = generated
    specs = speakers.speaker_voices(names, (*TRAIN_ACCENTS, *speakers.generated_accents(out)))
    with pytest.raises(VoiceError, match="unknown variant 'spk"):
        check_voices(specs)
    digests = set()
    with speakers.espeak_data(out):
        voices = check_voices(specs)
        assert not any(map(is_reserved, voices))
        for voice in voices:
            audio = render(TEXT, voice.espeak, NEUTRAL)
            assert measure(audio).f0_hz > 50  # a voiced, pitched speaker
            assert not np.array_equal(audio, render(TEXT, Voice(voice.accent, None).espeak, NEUTRAL))
            digests.add(hashlib.md5(audio.tobytes()).hexdigest())
    assert len(digests) == len(voices)
    assert check_voices(["en-us+m3"])  # the system's voices again once the block ends


def _lines(path):
    return {" ".join(line.split()) for line in path.read_text().splitlines()}


def test_generated_accents_take_no_part_from_a_reserved_accent(generated):
    """Every line after name and language is a line of a training accent (a rule that a training
    accent shares with a reserved one, such as RP's `replace 03 @ a#`, is the training accent's)
    or a blind consonant swap that no reserved accent makes."""
    out, _ = generated
    lang = out / speakers.DATA_FOLDER / "lang" / "gmw"
    training = set().union(*(_lines(lang / name) for name in speakers.TRAIN_ACCENT_FILES))
    reserved = set().union(*(_lines(lang / name) for name in speakers.RESERVED_ACCENT_FILES)) - training
    assert "replace 00 D d" in reserved  # en-029's th-stopping: the kind of rule that must not leak
    for name in speakers.generated_accents(out):
        lines = (lang / name).read_text().splitlines()
        assert lines[:2] == [f"name {name}", f"language {name}"]
        for line in lines[2:]:
            words = line.split()
            swap = words[:2] == ["replace", "00"] and len(words) == 4 and set(words[2:]) <= set(speakers.CONSONANTS)
            assert " ".join(words) in training or swap, f"{name}: {line!r} is in no training accent"
            assert " ".join(words) not in reserved, f"{name}: {line!r} is a reserved accent's rule"


def test_consonant_swaps_are_drawn_blind_but_never_a_reserved_rule():
    import random

    excluded = {"replace 00 D d"}
    drawn = [r for i in range(400) for r in speakers.random_substitutions(random.Random(i), excluded)]
    assert "replace 00 D d" not in drawn
    assert len(set(drawn)) > 200  # spread over the consonant pairs, not a fixed list
    assert {len(speakers.random_substitutions(random.Random(i), set())) for i in range(50)} == {0, 1, 2, 3}


def test_each_speaker_gets_its_own_distinct_accents_the_same_on_every_call():
    names, accents = ["spk0000", "spk0001", "spk0002"], ("en-us", "en-gb", "en-x-acc00", "en-x-acc01")
    pairs = speakers.speaker_voices(names, accents, seed=0, per_speaker=2)
    assert pairs == speakers.speaker_voices(names, accents, seed=0, per_speaker=2)
    assert [spec.split("+")[1] for spec in pairs] == [n for n in names for _ in range(2)]
    for name in names:
        mine = [spec.split("+")[0] for spec in pairs if spec.endswith(name)]
        assert len(set(mine)) == 2 and set(mine) <= set(accents)
    assert len(set(pairs)) == 6
    with pytest.raises(ValueError, match=r"per_speaker must be in 1..4"):
        speakers.speaker_voices(names, accents, per_speaker=5)


def test_too_many_speakers_for_espeak_are_refused_naming_the_limit(tmp_path):
    with pytest.raises(ValueError, match="at most 349 voices"):
        speakers.write_speakers(tmp_path, 400)


def test_synth_command_adds_generated_speakers_and_refuses_them_for_evaluation(tmp_path, capsys):
    sentences = tmp_path / "s.jsonl"
    sent.write_sentences([sent.Sentence("train00000", TEXT)], sentences)
    out = tmp_path / "corpus"
    code = synth.main(
        [
            "--sentences",
            str(sentences),
            "--out",
            str(out),
            "--voices",
            "en-us+m3",
            "--speakers",
            "2",
            "--accents",
            "1",
            "--accents-per-speaker",
            "2",
            "--voices-per-sentence",
            "5",
            "--quiet",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["voice"].split("+")[1] for r in rows[::5]) == ["m3", "spk0000", "spk0000", "spk0001", "spk0001"]
    assert len({r["voice"] for r in rows}) == 5 and len(rows) == 5 * 5
    capsys.readouterr()
    code = synth.main(["--sentences", str(sentences), "--out", str(tmp_path / "e"), "--eval", "--speakers", "2"])
    assert code == 2 and "cannot go with --eval" in capsys.readouterr().err
    code = synth.main(["--sentences", str(sentences), "--out", str(tmp_path / "a"), "--accents", "2"])
    assert code == 2 and "--accents needs --speakers" in capsys.readouterr().err


# --- python -m train ablate ------------------------------------------------------------------------


def test_ablate_drop_names_the_form_it_wants():
    assert ablate.Drop.parse("variant:breath,echo") == ablate.Drop("variant", ("breath", "echo"))
    for bad in ("breath", "accent:", "voice:breath"):
        with pytest.raises(ValueError, match="accent:KEY"):
            ablate.Drop.parse(bad)


def test_an_ablated_voice_lacks_exactly_the_dropped_settings(tmp_path):
    speakers.write_speakers(tmp_path, 0)
    voice = Voice.parse("en-us+f5")
    with speakers.espeak_data(tmp_path):
        plain = render(TEXT, voice.espeak, NEUTRAL)
        espeak = ablate.ablated_voice(tmp_path, voice, ablate.Drop("variant", ("breath", "echo")), 0)
        variant = (tmp_path / speakers.DATA_FOLDER / "voices" / "!v" / espeak.split("+")[1]).read_text()
        assert "breath " not in variant and "echo " not in variant and "formant 0" in variant
        assert not np.array_equal(render(TEXT, espeak, NEUTRAL), plain)
        accent = ablate.ablated_voice(tmp_path, voice, ablate.Drop("accent", ("replace",)), 1)
        lines = (tmp_path / speakers.DATA_FOLDER / "lang" / accent.split("+")[0]).read_text()
        assert "replace" not in lines and "phonemes en-us" in lines
        assert accent.endswith("+f5") and render(TEXT, accent, NEUTRAL).size


def test_ablate_command_scores_each_version_for_a_system_that_hears_emotion(bundle_dir, tmp_path, capsys):
    sentences = tmp_path / "s.jsonl"
    sent.write_sentences([sent.Sentence("eval00000", TEXT)], sentences)
    code = main(
        [
            "ablate",
            "--voice",
            "en-us+f5",
            "--drop",
            "variant:breath",
            "--sentences",
            str(sentences),
            "--clips",
            "1",
            "--model",
            str(bundle_dir),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in out["rows"]] == ["as is", "without variant breath"]
    assert all(set(r) == {"voice", "version", *EMOTIONS} for r in out["rows"])
    code = main(
        [
            "ablate",
            "--voice",
            "en-us+f5",
            "--sentences",
            str(sentences),
            "--system",
            "cascade",
            "--model",
            str(bundle_dir),
        ]
    )
    assert code == 2 and "reports no emotion" in capsys.readouterr().err
    code = main(["ablate", "--voice", "en-us+f5", "--sentences", str(sentences), "--clips", "0"])
    assert code == 2 and "--clips must be >= 1" in capsys.readouterr().err
