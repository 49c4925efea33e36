"""The cascades' pretrained Whisper recogniser: which sources it takes, and on real human recordings
the same token ids as the CTranslate2 runtime gives for the same wheel."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from blsp_emo.audio import load_audio, log_mel
from blsp_emo.systems.whisper_asr import WhisperRecognizer, is_whisper_source, transcript_budget

# Real voices that ship with Debian's alsa-utils (packages-dev.txt): a person naming each speaker.
ALSA = Path("/usr/share/sounds/alsa")
SPOKEN = {
    "Front_Center": "front center",
    "Front_Left": "front left",
    "Front_Right": "front right",
    "Rear_Left": "rear left",
    "Rear_Right": "rear right",
    "Side_Left": "side left",
    "Side_Right": "side right",
}


def test_whisper_sources_are_told_from_ctc_folders(tmp_path):
    assert is_whisper_source("wheel") and is_whisper_source("openai/whisper-tiny.en")
    (tmp_path / "ct2").mkdir()
    (tmp_path / "ct2" / "model.bin").write_bytes(b"")
    assert is_whisper_source(tmp_path / "ct2")
    for name, model_type, whisper in (("hf", "whisper", True), ("ctc", "blsp_emo_ctc", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert is_whisper_source(tmp_path / name) == whisper
    assert not is_whisper_source(tmp_path / "missing")


def test_a_recognizer_needs_the_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        WhisperRecognizer(model=None, tokenizer=None)  # refused before the model is touched


def test_a_transcript_is_bounded_by_what_the_clip_can_hold():
    budgets = [transcript_budget(s, 448) for s in (0.0, 0.5, 1, 3, 10, 30, 60, 600)]
    assert budgets == sorted(budgets) and budgets[0] >= 1  # longer clips may say more; a blip a word
    assert transcript_budget(3, 448) <= 50  # a looping decoder stops early on a short clip ...
    assert transcript_budget(11, 448) >= 3 * 25  # ... yet a fast talker's words fit (jfk.wav: 25 in 11 s)
    assert budgets[-3] == budgets[-2] == budgets[-1] <= 448 - 4  # the 30 s window; the prompt fits
    assert transcript_budget(30, 100) == 100 - 4


class _LoopingWhisper:
    """Stands in for a Whisper whose greedy decoder never ends: it fills whatever budget it gets."""

    class config:
        num_mel_bins, max_source_positions, max_target_positions = 80, 1500, 448

    device, dtype = torch.device("cpu"), torch.float32

    def eval(self):
        return self

    def generate(self, features, max_length, **_):
        assert features.shape == (1, 80, 3000)
        return torch.tensor([[1000] * max_length])  # as Whisper's: the transcript, its prompt left out


class _Tokenizer:
    all_special_ids = [50257, 50362]


def test_a_looping_decoder_stops_within_the_budget():
    recognizer = WhisperRecognizer(_LoopingWhisper(), _Tokenizer())
    short, long = (recognizer.token_ids(np.zeros(int(16_000 * s), np.float32)) for s in (2, 20))
    assert len(short) == transcript_budget(2, 448) < len(long) == transcript_budget(20, 448)


def _words(text: str) -> str:
    return " ".join("".join(c for c in text.lower().replace("centre", "center") if c.isalpha() or c == " ").split())


@pytest.mark.wheels
@pytest.mark.slow
def test_cascade_transcripts_of_real_voices_equal_ctranslate2(bundle_dir):
    ctranslate2 = pytest.importorskip("ctranslate2")
    clips = [ALSA / f"{name}.wav" for name in SPOKEN if (ALSA / f"{name}.wav").is_file()]
    if not clips:
        pytest.skip("needs Debian's alsa-utils (its recordings of a human voice)")
    from blsp_emo.bases.sources import BaseSourceError, wheel_path
    from blsp_emo.systems import load_system

    try:
        directory = wheel_path("encoder")
    except BaseSourceError as e:
        pytest.skip(str(e))
    cascade = load_system("cascade", model=bundle_dir, asr="wheel")
    recognizer = cascade.asr
    runtime = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    generation = recognizer.model.generation_config
    prompt = [generation.decoder_start_token_id, generation.no_timestamps_token_id]  # English-only tiny.en
    right = 0
    for clip in clips:
        audio = load_audio(clip)
        features, _ = log_mel([audio], 80, 3000)
        [expected] = runtime.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy())), [prompt], beam_size=1
        )  # greedy, as the cascade decodes
        assert recognizer.token_ids(audio) == expected.sequences_ids[0], clip.name
        reply = cascade.respond(audio)
        assert reply.transcript == recognizer.transcribe(audio)
        right += _words(reply.transcript) == SPOKEN[clip.stem]
    assert right >= len(clips) - 1  # a real voice, heard right (one slip allowed: "rear" is often "rare")
