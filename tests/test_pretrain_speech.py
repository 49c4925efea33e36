"""Stage 0, speech side: CTC and SER training on tiny models, WER, feature caching and batching."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import tiny
from blsp_emo.audio import log_mel
from blsp_emo.model.checkpoint import load_pretrained
from blsp_emo.systems.asr import CtcRecognizer, CtcRecognizerConfig
from blsp_emo.systems.ser import WhisperEmotionClassifier
from train.demo_world import pretrain_speech as ps
from train.demo_world.speech_corpus import (
    N_MELS,
    Corpus,
    collate,
    length_batches,
    mel_features,
    perturb,
    spec_augment,
    stretch_time,
    warp_frequency,
)
from train.demo_world.speech_fit import FitOptions, fit
from train.demo_world.speech_models import (
    EncoderSize,
    build_ser,
    emotion_ids,
    evaluate_asr,
    normalize,
    score_classifier,
    train_ser,
)
from train.manifest import ManifestError

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)"
)
TINY = EncoderSize(d_model=32, layers=2, heads=4, ffn=64)


def speak(text: str, voice: str = "en-us+m3") -> np.ndarray:
    from train.demo_world.prosody import Setting, render
    from train.demo_world.voices import Voice

    return render(text, Voice.parse(voice).espeak, Setting(0, 0, 0, 0, amplitude=100))


def corpus(waves, texts=None, emotions=None) -> Corpus:
    n = len(waves)
    return Corpus(
        tuple(mel_features(waves, N_MELS)), tuple(texts or [""] * n), tuple(emotions or [""] * n), tuple([""] * n)
    )


def asr_loss(texts):
    return lambda model, features, counts, batch: model.ctc_loss(features, counts, [texts[i] for i in batch])


def quiet(epochs: int, lr: float = 3e-3, batch_seconds: float = 60.0) -> FitOptions:
    return FitOptions(
        epochs=epochs, lr=lr, batch_seconds=batch_seconds, warmup=0.05, spec_augment=False, log_steps=10_000
    )


# --- metrics ------------------------------------------------------------------------------------


def test_normalize_keeps_what_ctc_can_write():
    assert normalize("Is it at nine O'Clock?  Yes, Sam.") == "is it at nine o'clock yes sam"


# --- features and batches -----------------------------------------------------------------------


def test_cached_features_equal_the_full_window_features():
    waves = [tiny.tone(s, f) for s, f in ((0.7, 200), (1.93, 300), (1.2, 150))]
    cached = mel_features(waves, N_MELS)
    full, counts = log_mel(waves, N_MELS, 1000)
    for f, window, n in zip(cached, full, counts.tolist()):
        assert f.dtype == torch.float16 and f.shape == (N_MELS, n)
        torch.testing.assert_close(f.float(), window[:, :n], atol=2e-3, rtol=1e-3)


def test_length_batches_group_similar_lengths():
    rng = random.Random(0)
    frames = [rng.randint(100, 600) for _ in range(500)]
    batches = length_batches(frames, 3000, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * max(frames[i] for i in b) <= 3000 for b in batches)
    padded = sum(len(b) * max(frames[i] for i in b) for b in batches)
    assert 1 - sum(frames) / padded < 0.1  # random batches of 5 waste about 30 %
    assert batches != length_batches(frames, 3000, random.Random(2))  # each epoch differs


def test_collate_pads_to_an_even_width():
    features, counts = collate([torch.ones(80, 5, dtype=torch.float16), torch.ones(80, 2, dtype=torch.float16)])
    assert features.shape == (2, 80, 6) and features.dtype == torch.float32
    assert counts.tolist() == [5, 2] and features[1, :, 2:].abs().sum() == 0


def test_augmentations():
    clip = mel_features([tiny.tone(1.0, 300)], N_MELS)[0].float()
    peak = int(clip.mean(1).argmax())
    assert int(warp_frequency(clip, 1.3).mean(1).argmax()) > peak  # formants (here the tone) move up
    assert int(warp_frequency(clip, 0.7).mean(1).argmax()) < peak
    assert stretch_time(clip, 0.8).shape == (N_MELS, 125)  # slower: more frames
    g = torch.Generator().manual_seed(0)
    assert torch.equal(perturb(clip.half(), 0.0, 0.0, g), clip)
    batch, counts = collate([clip, clip[:, :60]])
    masked = spec_augment(batch, counts, g)
    assert masked.shape == batch.shape and not torch.equal(masked, batch)
    assert masked[1, :, 60:].abs().sum() == 0  # padding stays padding


# --- training -----------------------------------------------------------------------------------


@needs_espeak
def test_ctc_loss_falls_on_a_fixed_batch():
    texts = ["yes", "go home"]
    data = corpus([speak(t) for t in texts], texts)
    torch.manual_seed(0)
    model = CtcRecognizer(CtcRecognizerConfig(TINY.config(), encode_full_window=False))
    features, counts = collate(data.features)
    with torch.no_grad():
        before = float(model.ctc_loss(features, counts, texts))
    fit(model, data, asr_loss(texts), quiet(epochs=30), "test")
    with torch.no_grad():
        assert float(model.ctc_loss(features, counts, texts)) < 0.5 * before


@needs_espeak
def test_overfit_model_transcribes_its_words(tmp_path):
    texts = ["yes", "go home", "red"]
    waves = [speak(t) for t in texts]
    data = corpus(waves, texts)
    torch.manual_seed(0)
    model = CtcRecognizer(CtcRecognizerConfig(EncoderSize(64, 2, 4, 128).config(), encode_full_window=False))
    fit(model, data, asr_loss(texts), quiet(epochs=150, lr=5e-3), "test")
    assert [model.transcribe(w) for w in waves] == texts
    assert evaluate_asr(model, data)["wer"] == 0.0
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(CtcRecognizer, tmp_path)
    assert loaded.transcribe(waves[1]) == "go home"


def test_ser_loss_falls():
    waves = [tiny.tone(1.0 + 0.1 * i, f) for i, f in enumerate((120, 130, 330, 350, 120, 340))]
    emotions = ["sad", "sad", "happy", "happy", "sad", "happy"]
    data = corpus(waves, emotions=emotions)
    torch.manual_seed(0)
    model = build_ser(TINY)
    labels = emotion_ids(data)
    features, counts = collate(data.features)

    def loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(features, counts), labels))

    before = loss()
    train_ser(model, data, quiet(epochs=40, lr=3e-3))
    assert loss() < 0.5 * before
    assert score_classifier(model, data)["accuracy"] == 1.0


def test_ser_needs_an_emotion_per_row():
    with pytest.raises(ManifestError, match="no emotion label"):
        emotion_ids(corpus([tiny.tone(1.0)], emotions=[""]))


# --- commands and folders -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rows = []
    for i, (freq, emotion) in enumerate([(120, "sad"), (330, "happy")] * 3):
        sf.write(root / f"{i}.wav", tiny.tone(1.0 + 0.2 * i, freq), 16000)
        rows.append({"audio": f"{i}.wav", "text": "a tone", "emotion": emotion, "voice": "en-us+m3"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "manifest.jsonl"


def test_commands_write_folders_that_load_and_give_identical_outputs(manifest, tmp_path):
    size = ["--d-model", "32", "--layers", "2", "--heads", "4", "--ffn", "64"]
    common = ["--manifest", str(manifest), "--eval-manifest", str(manifest), "--epochs", "2", "--threads", "1"]
    assert ps.main(["asr", *common, "--out", str(tmp_path / "asr"), *size]) == 0
    assert (
        ps.main(
            [
                "ser",
                *common,
                "--out",
                str(tmp_path / "ser"),
                "--init-encoder",
                str(tmp_path / "asr"),
                "--freeze-encoder",
            ]
        )
        == 0
    )
    asr_metrics = json.loads((tmp_path / "asr" / "metrics.json").read_text())
    ser_metrics = json.loads((tmp_path / "ser" / "metrics.json").read_text())
    assert 0 <= asr_metrics["eval"]["wer"] and asr_metrics["train_clips"] == 6
    assert asr_metrics["eval"]["decoding"] == "lexicon + word bigram LM" and 0 <= asr_metrics["eval"]["greedy_wer"]
    assert (tmp_path / "asr" / "word_lm.json").is_file()  # the cascades decode with it
    assert ser_metrics["size"]["d_model"] == 32 and "accuracy" in ser_metrics["eval"]

    asr = load_pretrained(CtcRecognizer, tmp_path / "asr")
    ser = load_pretrained(WhisperEmotionClassifier, tmp_path / "ser")
    assert not asr.config.encode_full_window and not ser.config.encode_full_window
    for name, tensor in asr.encoder.state_dict().items():  # a frozen encoder stays the ASR encoder
        torch.testing.assert_close(ser.encoder.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: CtcRecognizer(CtcRecognizerConfig(TINY.config(), encode_full_window=False)),
        lambda: build_ser(TINY),
    ],
)
def test_saved_folders_load_and_give_identical_outputs(build, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(type(model), tmp_path)
    features, counts = collate(mel_features([tiny.tone(1.3), tiny.tone(0.8, 300)], N_MELS))
    with torch.no_grad():
        mine, theirs = model(features, counts), loaded(features, counts)
    mine, theirs = (mine[0], theirs[0]) if isinstance(mine, tuple) else (mine, theirs)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_bad_input_is_reported_with_the_fix(manifest, tmp_path, capsys):
    assert ps.main(["asr", "--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "none.jsonl does not exist" in capsys.readouterr().err
    args = [
        "ser",
        "--manifest",
        str(manifest),
        "--out",
        str(tmp_path / "o"),
        "--init-encoder",
        str(tmp_path),
        "--layers",
        "3",
    ]
    assert ps.main(args) == 2
    assert "--init-encoder takes the ASR model's size" in capsys.readouterr().err
    assert ps.main(["ser", "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--freeze-encoder"]) == 2
    assert "pass --init-encoder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="divisible"):
        EncoderSize(d_model=30, heads=4)


def test_ser_on_a_pretrained_whisper_tunes_only_its_top_layers(tmp_path):
    import tiny
    from train.demo_world.speech_models import build_ser

    whisper, _ = tiny.write_bases(tmp_path)
    model = build_ser(None, str(whisper), tune_layers=1)
    trainable = {
        name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad
    }
    last = len(model.encoder.layers) - 1
    assert {n for n in trainable if n.startswith("encoder.")} == {"encoder.layers", "encoder.layer_norm"}
    assert all(p.requires_grad for p in model.encoder.layers[last].parameters())
    assert not any(p.requires_grad for p in model.encoder.layers[0].parameters())
    with pytest.raises(ValueError, match="tune_layers must be in 0..2"):
        build_ser(None, str(whisper), tune_layers=5)
