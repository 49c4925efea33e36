"""The synthetic emotional-speech corpus: `train.sentences` and `train.synth` (issue 5, items 1-2)."""

import hashlib
import json
import random
import shutil
from argparse import ArgumentParser, Namespace

import numpy as np
import pytest
import soundfile as sf

from blsp_emo.audio import SAMPLE_RATE, load_audio
from blsp_emo.emotion import EMOTIONS
from train.demo_world import sentences as sent
from train.demo_world import synth
from train.demo_world.prosody import (
    LIMITS,
    MEASURE_TEXT,
    PROSODY,
    Setting,
    measure,
    render,
    sample_setting,
    voice_amplitude,
)
from train.demo_world.voices import EVAL_VOICES, TRAIN_VOICES, Voice, VoiceError, check_voices, is_reserved

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")

VOICE = "en-us+m3"


def _synth_args(**overrides) -> Namespace:
    """The CLI's own defaults (from its parser), with `overrides`."""
    parser = ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--voices", VOICE, "--quiet"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="module")
def sentences_file(tmp_path_factory):
    """One plain sentence and one with an angry cue: 5 + 1 clips for one voice."""
    path = tmp_path_factory.mktemp("sentences") / "s.jsonl"
    sent.write_sentences(
        [
            sent.Sentence("train00000", "The letter is at the front desk."),
            sent.Sentence("train00001", "How dare you read my letters?", "angry"),
        ],
        path,
    )
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sentences_file):
    out = tmp_path_factory.mktemp("corpus")
    assert synth.run(_synth_args(sentences=str(sentences_file), out=str(out))) == 0
    return out


def _rows(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def _digest(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((folder / "wav").glob("*.wav"))}


# --- the corpus ---------------------------------------------------------------------------------


def test_manifest_rows_and_wav_format(corpus):
    rows = _rows(corpus)
    assert len(rows) == 6  # the plain sentence in five emotions, the cue sentence once
    assert sorted(r["emotion"] for r in rows if r["sentence_id"] == "train00000") == sorted(EMOTIONS)
    for row in rows:
        assert {"audio", "text", "emotion", "voice", "prosody"} <= row.keys()
        assert row["voice"] == VOICE and row["emotion"] in EMOTIONS
        assert row["audio"] == f"wav/{row['sentence_id']}_en-us_m3_{row['emotion']}.wav"
        info = sf.info(corpus / row["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        audio = load_audio(str(corpus / row["audio"]))
        assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
        assert 0.8 < audio.size / SAMPLE_RATE < 6.0  # a short sentence at 120-230 words a minute


def test_second_run_renders_nothing(corpus, sentences_file, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (corpus / "wav").iterdir()}
    capsys.readouterr()
    synth.run(_synth_args(sentences=str(sentences_file), out=str(corpus)))
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rendered"], summary["kept"]) == (0, 6)
    assert {p.name: p.stat().st_mtime_ns for p in (corpus / "wav").iterdir()} == before


def test_changed_seed_rerenders(corpus, sentences_file, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(corpus, out)
    synth.run(_synth_args(sentences=str(sentences_file), out=str(out), seed=1, emotions="sad"))
    assert json.loads(capsys.readouterr().out)["rendered"] >= 1  # new prosody, so the old clip is stale


def test_same_seed_same_bytes(corpus, sentences_file, tmp_path):
    synth.run(_synth_args(sentences=str(sentences_file), out=str(tmp_path), workers=1))
    assert _digest(tmp_path) == _digest(corpus)
    assert _rows(tmp_path) == _rows(corpus)


@pytest.mark.slow
def test_cue_sentences_mostly_take_their_tone():
    voices = check_voices(TRAIN_VOICES)
    cue = [sent.Sentence(f"train{i:05d}", "I'm sick of your excuses.", "angry") for i in range(20)]
    clips = synth.plan(cue, voices, seed=3)
    assert len(clips) == 20 * len(voices)  # one clip per cue sentence and voice
    share = np.mean([c.emotion == "angry" for c in clips])
    assert 0.7 < share < 0.9  # --cue-match 0.8


def test_plain_text_sentences_file(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("The bus starts at nine.\n\nIs the parcel upstairs?\n")
    got = sent.read_sentences(path)
    assert [(s.id, s.cue) for s in got] == [("s00000", None), ("s00001", None)]


# --- prosody moves the acoustics as the table says ----------------------------------------------


@pytest.fixture(scope="module")
def acoustics():
    """One sentence, one voice, each emotion at its table means (jitter off)."""
    voice = Voice.parse(VOICE)
    amplitude = voice_amplitude(voice.espeak)
    out = {}
    for emotion in EMOTIONS:
        setting = sample_setting(emotion, random.Random(0), amplitude, jitter=0.0)
        out[emotion] = measure(render(MEASURE_TEXT, voice.espeak, setting))
    return out


def test_sad_is_slower_lower_narrower_and_softer(acoustics):
    sad, neutral = acoustics["sad"], acoustics["neutral"]
    assert sad.duration_s > 1.15 * neutral.duration_s
    assert sad.f0_hz < 0.9 * neutral.f0_hz
    assert sad.f0_range_st < neutral.f0_range_st - 1
    assert sad.rms < 0.8 * neutral.rms


def test_angry_is_louder_and_faster(acoustics):
    angry, neutral = acoustics["angry"], acoustics["neutral"]
    assert angry.rms > 1.4 * neutral.rms
    assert angry.duration_s < 0.92 * neutral.duration_s


def test_happy_and_surprise_are_higher(acoustics):
    neutral = acoustics["neutral"]
    assert acoustics["happy"].f0_hz > 1.1 * neutral.f0_hz
    assert acoustics["surprise"].f0_hz > 1.1 * acoustics["happy"].f0_hz
    assert acoustics["happy"].f0_range_st > neutral.f0_range_st
    assert acoustics["surprise"].f0_range_st > acoustics["sad"].f0_range_st + 3


@pytest.mark.parametrize(
    "knob, low, high, measured",
    [
        ("pitch", -40, 60, "f0_hz"),
        ("pitch_range", -60, 80, "f0_range_st"),
        ("rate", 40, -30, "duration_s"),  # faster speech is shorter
        ("volume", -40, 60, "rms"),
    ],
)
def test_each_ssml_knob_moves_its_measure(knob, low, high, measured):
    voice = Voice.parse(VOICE)
    base = dict(pitch=0, pitch_range=0, rate=0, volume=0, amplitude=60)
    got = []
    for value in (low, high):
        audio = render(MEASURE_TEXT, voice.espeak, Setting(**{**base, knob: value}))
        got.append(getattr(measure(audio), measured))
    assert got[1] > 1.15 * got[0]


def test_the_spectral_tilt_reads_brightness_not_level():
    from train.demo_world.prosody import spectral_tilt_db

    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    low, high = np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 2000 * t)
    assert spectral_tilt_db(low + 0.1 * high) == pytest.approx(-20, abs=0.1)  # amplitude 1/10: -20 dB
    assert spectral_tilt_db(0.01 * (low + 0.1 * high)) == pytest.approx(-20, abs=0.1)  # any gain
    assert spectral_tilt_db(np.zeros(100)) == 0.0 and spectral_tilt_db(np.zeros(0)) == 0.0
    # espeak-ng's volume scales the waveform: its tilt stays where it was (docs/world.md)
    voice = Voice.parse(VOICE)
    base = dict(pitch=0, pitch_range=0, rate=0, amplitude=60)
    quiet, loud = (measure(render(MEASURE_TEXT, voice.espeak, Setting(**base, volume=v))) for v in (-40, 60))
    assert loud.rms > 2 * quiet.rms and abs(loud.tilt_db - quiet.tilt_db) < 1.0


def test_jitter_stays_within_the_table():
    rng = random.Random(0)
    for emotion, prosody in PROSODY.items():
        for _ in range(50):
            setting = sample_setting(emotion, rng, amplitude=60)
            for name, knob in vars(prosody).items():
                value, (low, high) = getattr(setting, name), LIMITS[name]
                assert low <= value <= high
                assert abs(value - knob.mean) <= knob.jitter + 0.5 or value in (low, high)  # clipped


# --- voices -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["en-029+m3", "en-029", "en-gb-x-gbcwmd+f2", "en-us+f5", "en+m8", "en-us+Annie", "en-gb-x-rp+edward"]
)
def test_reserved_voices_are_refused_for_training(spec):
    assert is_reserved(spec)
    with pytest.raises(VoiceError, match="reserved for evaluation"):
        check_voices([spec])
    assert check_voices([spec], evaluation=True)[0].spec == Voice.parse(spec).spec


def test_eval_refuses_training_voices_and_cli_reports_it(sentences_file, tmp_path, capsys):
    with pytest.raises(VoiceError, match="training voice"):
        check_voices(["en-us+m3"], evaluation=True)
    code = synth.main(["--sentences", str(sentences_file), "--out", str(tmp_path), "--voices", "en-us+m3,en-029+f2"])
    assert code == 2 and "en-029+f2 is reserved" in capsys.readouterr().err
    assert not (tmp_path / "manifest.jsonl").exists()


def test_default_voices_follow_the_protocol():
    assert len(TRAIN_VOICES) >= 8 and not any(map(is_reserved, TRAIN_VOICES))
    assert all(map(is_reserved, EVAL_VOICES))
    assert len({Voice.parse(v).accent for v in TRAIN_VOICES}) >= 4


@pytest.mark.slow
def test_every_default_voice_renders_as_itself():
    """espeak-ng falls back to its default voice on a bad name without an error: every default
    voice must sound different from every other and from its accent without the variant."""
    neutral = Setting(0, 0, 0, 0, amplitude=60)
    digests = {}
    for spec in (*TRAIN_VOICES, *EVAL_VOICES):
        voice = Voice.parse(spec)
        audio = render("Hello there.", voice.espeak, neutral)
        plain = render("Hello there.", Voice(voice.accent, None).espeak, neutral)
        assert not np.array_equal(audio, plain), f"{spec}: the variant had no effect"
        digests[spec] = hashlib.md5(audio.tobytes()).hexdigest()
    assert len(set(digests.values())) == len(digests)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("en-xx+m3", "unknown accent"),
        ("en-us+nonexist", "unknown variant"),
        ("en-us+Edward", "did you mean 'edward'"),
    ],
)
def test_unknown_voices_are_refused(spec, message):
    with pytest.raises(VoiceError, match=message):
        check_voices([spec])


def test_alias_accent_keeps_its_variant():
    assert Voice.parse("en-gb+f3").espeak == "gmw/en+f3"  # `-v en-gb+f3` would drop the +f3


# --- sentences ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7])
def test_train_and_eval_sentences_are_disjoint(seed):
    train = {s.text for s in sent.generate(3000, seed, "train")}
    for n in (10, 400):
        evaluation = sent.generate(n, seed + 1, "eval")
        assert not train & {s.text for s in evaluation}
        assert all(sent.split_of(s.text) == "eval" for s in evaluation)
    assert all(sent.split_of(t) == "train" for t in train)


def test_cue_fraction_and_balance():
    for fraction in (0.15, 0.3, 0.0):
        got = sent.generate(1000, 0, "train", cue_fraction=fraction)
        cues = [s.cue for s in got if s.cue]
        assert len(cues) == int(1000 * fraction)
        if cues:
            assert {cues.count(e) for e in sent.CUE_EMOTIONS} <= {len(cues) // 4, len(cues) // 4 + 1}


def test_sentences_use_only_allowed_characters_and_are_distinct():
    got = sent.generate(2000, 0, "train") + sent.generate(500, 0, "eval")
    bad = [s.text for s in got if not sent.ALLOWED.fullmatch(s.text)]
    assert not bad, bad[:3]
    assert len({s.text for s in got}) == len(got)


def test_generation_is_deterministic_and_prefix_stable():
    assert sent.generate(300, 5) == sent.generate(300, 5)
    assert sent.generate(300, 5)[:120] == sent.generate(120, 5)
    assert sent.generate(50, 5) != sent.generate(50, 6)


def test_sentences_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "eval.jsonl"
    assert sent.main(["--n", "40", "--seed", "2", "--split", "eval", "--out", str(out)]) == 0
    assert sent.read_sentences(out) == sent.generate(40, 2, "eval")
    assert json.loads(capsys.readouterr().out)["n"] == 40
    assert sent.main(["--n", "0", "--out", str(out)]) == 2


def test_voices_per_sentence_samples_voices_but_keeps_all_tones():
    sentences = sent.generate(6, seed=3, cue_fraction=0.0)
    voices = check_voices(["en-us+m3", "en-us+f3", "en-gb+m2"])
    clips = synth.plan(sentences, voices, seed=0, voices_per_sentence=1)
    assert len(clips) == 6 * 5
    for s in sentences:
        mine = [c for c in clips if c.sentence.id == s.id]
        assert len({c.voice for c in mine}) == 1 and sorted(c.emotion for c in mine) == sorted(EMOTIONS)
    assert len({c.voice for c in clips}) > 1  # different sentences draw different voices
    with pytest.raises(ValueError, match="voices_per_sentence must be in 1..3"):
        synth.plan(sentences, voices, voices_per_sentence=4)
