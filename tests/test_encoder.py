"""The two ways to run the Whisper encoder: the released full window, and each clip's own length."""

import torch
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import tiny
from blsp_emo.model.encoder import encode
from blsp_emo.model.processor import clip_features


def _encoder():
    torch.manual_seed(0)
    return WhisperEncoder(tiny.encoder_config()).eval()


@torch.no_grad()
def test_full_window_is_the_plain_transformers_encoder():
    enc = _encoder()
    features, counts = clip_features([tiny.tone(2.0)], tiny.model()[0].config)
    hidden, lengths = encode(enc, features, counts, full_window=True)
    assert torch.equal(hidden, enc(features).last_hidden_state)
    assert hidden.shape[1] == tiny.WINDOW_POSITIONS and lengths.tolist() == [100]


@torch.no_grad()
def test_clip_mode_costs_only_the_longest_clip_and_ignores_the_batch():
    enc = _encoder()
    config = tiny.model()[0].config
    short, long_ = tiny.tone(1.2, 200.0), tiny.tone(3.0, 300.0)
    batch_h, batch_len = encode(enc, *clip_features([short, long_], config), full_window=False)
    alone_h, alone_len = encode(enc, *clip_features([short], config), full_window=False)
    assert batch_h.shape[1] == 150 and alone_h.shape[1] == 60  # 3.0 s and 1.2 s at 50 steps per second
    torch.testing.assert_close(batch_h[0, :60], alone_h[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_model_in_clip_mode_answers_with_the_same_token_count(tokenizer):
    from blsp_emo.decoding.generation import GenerationOptions
    from blsp_emo.prompts import SYSTEM_EMPATHETIC
    from blsp_emo.systems import BlspSystem

    model, tok = tiny.model(tok=tokenizer)
    model.config.encode_full_window = False
    speech = model.encode_speech(*clip_features([tiny.tone(5.0)], model.config))
    assert speech.lengths.tolist() == [32] and speech.embeds.shape[1] == 32
    reply = BlspSystem("blsp-emo", "", model, tok, SYSTEM_EMPATHETIC, True).respond(
        tiny.tone(2.0), options=GenerationOptions(greedy=True, max_new_tokens=4)
    )
    assert reply.done and len(reply.emotion_scores) == 5
