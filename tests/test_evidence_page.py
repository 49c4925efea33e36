"""The evidence behind a Talk turn's emotion, on the page: read where the models run (in this process, as
with `--workers 0`, or in a real model worker) after the reply, rendered under the probabilities, and a
failure in it one line that leaves the reply as it was."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

import app  # noqa: E402
import tiny  # noqa: E402
from blsp_emo import GenerationOptions  # noqa: E402
from blsp_emo.calibration import Calibration, save_calibration  # noqa: E402
from blsp_emo.lexical_emotion import LEXICAL_FILE, LexicalClassifier, LexicalEmotion, save_classifier  # noqa: E402
from blsp_emo.prosody_reading import REFERENCE_FILE, build_reference, read_prosody, save_reference  # noqa: E402
from blsp_emo.serving.evidence import EvidenceReader  # noqa: E402
from blsp_emo.serving.pool import WorkerPool  # noqa: E402
from blsp_emo.serving.protocol import WorkerSpec  # noqa: E402
from blsp_emo.systems import load_systems  # noqa: E402
from blsp_emo.tts import NullSynthesizer  # noqa: E402
from webui import evidence_view, handsfree  # noqa: E402
from webui.evidence_view import PENDING, render  # noqa: E402
from webui.live_speech import VoiceChoice  # noqa: E402

OPTIONS = GenerationOptions(max_new_tokens=8, greedy=True)
SETTINGS = (0.5, 0.5, 8, True, 0)
SCORES = {"neutral": 0.2, "happy": 0.1, "angry": 0.1, "sad": 0.54, "surprise": 0.06}


def _reference(folder: Path) -> None:
    """A neutral reference from tones, where the bundle keeps it."""
    readings = [read_prosody(16000, tiny.tone(2.0, f)) for f in (120.0, 150.0, 180.0)]
    save_reference(build_reference(readings, "tones"), folder / REFERENCE_FILE)


@pytest.fixture(scope="module")
def bundle(bundle_dir, tmp_path_factory):
    """The tiny bundle with a neutral reference and a calibration whose threshold makes every call unsure."""
    root = tmp_path_factory.mktemp("evidenced") / "bundle"
    shutil.copytree(bundle_dir, root)
    _reference(root)
    save_calibration(Calibration(1.0, unsure_below=0.99), root / "blsp-emo")
    return root


def _page(systems, read):
    demo = app.build_demo(systems, NullSynthesizer(), options=OPTIONS, examples_dir=Path("/nonexistent"), evidence=read)
    talk = next(fn for fn in demo.fns.values() if fn.api_name == "talk")
    return talk.fn.__self__, set(talk.outputs)


def _skips(update) -> bool:
    return any(isinstance(v, dict) and v.get("__type__") == "update" for v in update.values())


def _evidence_reaches_the_page(cb, outputs, clip_path):
    """A spoken turn: pending while written, then one more update with the evidence and nothing else new."""
    ui = cb.ui
    updates = list(cb.talk(str(clip_path), "", (), "blsp-emo", *SETTINGS))
    *written, done, shown = updates
    assert all(u[ui.evidence] == PENDING for u in [*written, done])
    assert all(set(u) == outputs and not _skips(u) for u in updates)  # every output a value, as every update
    assert shown[ui.chatbot] == done[ui.chatbot] and shown[ui.card] == done[ui.card] and shown[ui.reply_stream] is None
    text = shown[ui.evidence]
    assert "🤔 **Unsure: " in text and "Against neutral speech of the training voices:" in text
    assert text.count("\n- ") == 4 and "Speaking rate" in text and "neutral median" in text
    assert "No words/tone check: no lexical_emotion.json" in text  # the bundle has no words classifier
    assert shown[ui.chat][-1].evidence == text and shown[ui.chat][-1].reply == done[ui.chat][-1].reply
    return shown[ui.chat]


def test_in_process_a_spoken_turn_gets_its_evidence_after_the_reply(bundle, clip_path):
    systems, notes = load_systems(["blsp-emo", "blsp"], model=str(bundle))
    assert notes == [] and systems["blsp-emo"].calibration.unsure_below == 0.99
    cb, outputs = _page(systems, EvidenceReader(str(bundle), device="cpu").read)
    ui = cb.ui
    chat = _evidence_reaches_the_page(cb, outputs, clip_path)
    typed = list(cb.talk(None, "and then?", chat, "blsp-emo", *SETTINGS))  # a typed turn: no tone, no evidence
    assert all(u[ui.evidence] == "" for u in typed) and typed[-1][ui.chat][-1].reply.done
    blsp = list(cb.talk(str(clip_path), "", (), "blsp", *SETTINGS))  # a system that hears no tone: none either
    assert all(u[ui.evidence] == "" for u in blsp) and blsp[-1][ui.chat][-1].reply.done
    assert cb.clear()[ui.evidence] == ""
    # a hands-free turn is answered by the same turn, evidence included
    heard = handsfree.HeardTurn(str(clip_path), 1, 0.0, 0.9, 0.8, 5.0, False)
    *_, last = handsfree.Listener(cb).talk(heard, (), VoiceChoice(), "blsp-emo", *SETTINGS)
    assert "🤔 **Unsure: " in last[ui.evidence]


def test_a_failure_in_the_evidence_is_one_line_and_the_reply_stands(bundle, clip_path):
    systems, _ = load_systems(["blsp-emo"], model=str(bundle))

    def broken(*_):
        raise RuntimeError("the reference vanished")

    cb, _ = _page(systems, broken)
    *_, done, shown = cb.talk(str(clip_path), "", (), "blsp-emo", *SETTINGS)
    line = shown[cb.ui.evidence]
    assert "\n" not in line and "could not be read this turn (RuntimeError: the reference vanished)" in line
    assert shown[cb.ui.chat][-1].reply == done[cb.ui.chat][-1].reply and shown[cb.ui.chat][-1].reply.done
    assert shown[cb.ui.chatbot] == done[cb.ui.chatbot]
    # the reader itself never raises either: a clip it cannot read is its one line
    found = EvidenceReader(str(bundle)).read(systems["blsp-emo"], np.zeros((2, 10), np.float32), SCORES, None)
    assert found == {"error": "ValueError: expected a mono 16 kHz clip (T,), got shape (2, 10)"}


@pytest.mark.server
def test_through_a_worker_the_evidence_comes_back_as_a_plain_dict(bundle, clip_path):
    spec = WorkerSpec(("blsp-emo", "blsp"), model=str(bundle), threads=1, slots=1)
    pool = WorkerPool.start(spec, workers=1, timeout=600)
    try:
        cb, outputs = _page(pool.systems, pool.evidence)
        _evidence_reaches_the_page(cb, outputs, clip_path)
        clip = tiny.tone(2.0, 180.0)
        found = pool.evidence(pool.systems["blsp-emo"], clip, SCORES, None)
        assert type(found) is dict and found["sureness"] == {
            "emotion": "sad",
            "probability": 0.54,
            "threshold": 0.99,
            "unsure": True,
        }
        assert len(found["comparisons"]) == 4 and len(found["prosody_lines"]) == 4
        # a system that hears no emotion has none, said in one line; the worker goes on
        assert "blsp heard no emotion" in pool.evidence(pool.systems["blsp"], clip, {}, None)["error"]
        assert all(w.alive and len(w.free) == len(w.connections) for w in pool._workers)
        assert pool.systems["blsp-emo"].respond(text="still there?", options=OPTIONS).done
    finally:
        pool.close()


# --- the words/tone check: a classifier file, a recogniser, or why there is none ---------------------


@pytest.fixture()
def folder(tmp_path):
    """A bundle's evidence files alone (the reader needs no weights): reference, classifier, calibration."""
    (tmp_path / "blsp-emo").mkdir()
    _reference(tmp_path)
    save_calibration(Calibration(1.0, unsure_below=0.6), tmp_path / "blsp-emo")
    labels = ("neutral", "happy", "angry", "sad", "surprise")
    save_classifier(LexicalClassifier(labels, ((0.0,),) * 5, (0.0,) * 5), tmp_path / LEXICAL_FILE)
    return tmp_path


def _blsp_emo(calibration=None):
    return SimpleNamespace(name="blsp-emo", emotion_source="emotion head", window_seconds=30.0, calibration=calibration)


@pytest.fixture()
def neutral_words(monkeypatch):
    """The words read as neutral, without MiniLM (its reading is tested in test_evidence.py)."""
    monkeypatch.setattr("blsp_emo.lexical_emotion.encoder_available", lambda: True)
    monkeypatch.setattr("blsp_emo.evidence.read_words", lambda _, text: LexicalEmotion(text, "neutral", 0.9, {}))


def test_the_words_and_the_tone_flag_with_the_recogniser_transcript(folder, monkeypatch, neutral_words):
    loaded = []

    def load_asr(source, device):
        loaded.append(source)
        return SimpleNamespace(transcribe=lambda clip: "the letter is at the front desk")

    monkeypatch.setattr("blsp_emo.systems._load_asr", load_asr)
    (folder / "asr").mkdir()
    reader = EvidenceReader(str(folder), device="cpu")
    for _ in range(2):
        found = reader.read(_blsp_emo(), tiny.tone(2.0), SCORES, None)
    assert loaded == [str(folder / "asr")]  # loaded once, on the first clip that needed it
    assert found["words_tone"]["disagree"] and found["words_note"] is None
    text = render(found)
    assert text.startswith("🤔 **Unsure: 54 % sad.** Below 60 %")
    assert "⚠️ **The words are neutral, the voice sounds sad.** (words: “the letter is at the front desk”)" in text
    # a cascade's own transcript is used as it is: no recogniser needed
    said = reader.read(_blsp_emo(), tiny.tone(2.0), {**SCORES, "sad": 0.1, "neutral": 0.64}, "as it was said")
    assert not said["words_tone"]["disagree"] and "The words and the voice agree: both neutral." in render(said)


def test_without_a_recogniser_the_evidence_says_why_it_has_no_flag(folder, neutral_words):
    reader = EvidenceReader(str(folder), device="cpu")  # the folder has no asr/
    found = reader.read(_blsp_emo(), tiny.tone(2.0), SCORES, None)
    assert found["words_tone"] is None and len(found["comparisons"]) == 4
    assert found["words_note"] == (
        "No words/tone check: the recogniser did not load (this system gives no transcript and no recogniser "
        "was found; pass --asr DIR)."
    )
    text = render(found)
    assert "ℹ️ No words/tone check: the recogniser did not load" in text and text.count("\n- ") == 4


def test_the_rendering_of_a_crafted_case():
    prosody = ["Median pitch 84 Hz: 3.9 semitones lower than the neutral median (lower than 97% of neutral clips)."]
    sure = {"emotion": "surprise", "probability": 0.92, "threshold": 0.61, "unsure": False}
    flag = {"transcript": "x" * 200, "words": "neutral", "words_probability": 0.8, "voice": "surprise"}
    found = {"sureness": sure, "words_tone": {**flag, "disagree": True}, "comparisons": [{}], "prosody_lines": prosody}
    text = render(found)
    lines = text.split("\n")
    assert lines[0] == "✅ **Sure: 92 % surprise** (unsure below 61 %)  "
    assert lines[1].startswith("⚠️ **The words are neutral, the voice sounds surprised.** (words: “xxx")
    assert lines[1].endswith(f"“{'x' * (evidence_view._SHOWN_WORDS - 1)}…”)")  # a long transcript is cut
    assert lines[3:] == ["Against neutral speech of the training voices:", "", f"- {prosody[0]}"]
    uncalibrated = render({**found, "sureness": {**sure, "threshold": None}, "words_tone": None, "comparisons": []})
    assert uncalibrated.startswith("**92 % surprise**\n\nMeasured in your clip:")
    assert render({"error": "WorkerError: <b>gone</b>"}).count("&lt;b&gt;") == 1  # shown as text, not markup
    system = SimpleNamespace(emotion_source=None)
    assert evidence_view.pending(print, system, np.zeros(3), SimpleNamespace(emotion_scores=SCORES)) == ""
