"""The speech-token count has one owner, and the adapter's real output agrees with it."""

import pytest
import torch

from blsp_emo.model.adapter import Adapter, speech_token_count
from blsp_emo.model.config import BlspEmoConfig


@pytest.mark.parametrize("seconds, tokens", [(1, 7), (5, 32), (10, 63), (30, 188)])
def test_reference_token_counts(seconds, tokens):
    assert speech_token_count(seconds * 100) == tokens


def test_about_6_25_tokens_per_second():
    assert speech_token_count(3000) / 30 == pytest.approx(6.25, abs=0.05)


@pytest.mark.parametrize("kernels", [(5, 5, 5), (3, 5), (7,)])
def test_adapter_output_length_matches_count(kernels):
    adapter = Adapter(16, 24, kernels, stride=2, inner_dim=8)
    for mel_frames in (1, 2, 3, 99, 100, 101, 500, 1337, 3000):
        enc_frames = (mel_frames - 1) // 2 + 1
        out = adapter(torch.randn(1, enc_frames, 16))
        assert out.shape == (1, speech_token_count(mel_frames, kernels, 2), 24)
        assert adapter.output_length(mel_frames) == out.shape[1]


def test_full_scale_adapter_has_the_reference_parameter_count():
    config = BlspEmoConfig()
    with torch.device("meta"):
        adapter = Adapter(config.encoder_config.d_model, config.llm_config.hidden_size, config.conv_kernel_sizes)
    assert sum(p.numel() for p in adapter.parameters()) == 89_412_608
    assert [tuple(c.weight.shape) for c in adapter.subsampler.conv_layers] == [
        (2560, 1280, 5),
        (2560, 1280, 5),
        (8192, 1280, 5),
    ]


def test_adapter_is_layer_normed():
    out = Adapter(16, 24, inner_dim=8)(torch.randn(2, 40, 16) * 10)
    assert torch.allclose(out.mean(-1), torch.zeros(2, out.shape[1]), atol=1e-5)
