"""The lean decode step computes what transformers' Qwen2 forward computes, on the same weights."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2ForCausalLM

import tiny
from blsp_emo.decoding.decode_step import Qwen2DecodeStep, decode_step
from blsp_emo.decoding.generation import new_cache

# float32 rounding apart: on CPU the step multiplies with other BLAS kernels than F.linear
# (decode_step.py), so sums are taken in another order. A dropped bias or a swapped weight is O(1).
CLOSE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def llm():
    """Every weight random, biases and norms included, and an untied head: a step that drops or swaps
    any of them gives other logits."""
    torch.manual_seed(0)
    config = tiny.llm_config(64)
    config.tie_word_embeddings = False
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(1 + 0.3 * torch.randn_like(param) if "norm" in name else 0.3 * torch.randn_like(param))
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA is exercised
    assert model.model.layers[0].self_attn.q_proj.bias.abs().sum() > 0
    return model


def _prefilled(llm, rows, mask=None, positions=None):
    cache = new_cache(llm)
    with torch.inference_mode():
        llm(
            input_ids=torch.tensor(rows),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
    return cache


@torch.inference_mode()
def test_steps_give_transformers_logits_and_cache(llm):
    ours, theirs = _prefilled(llm, [[3, 1, 4, 1, 5]]), _prefilled(llm, [[3, 1, 4, 1, 5]])
    step = decode_step(llm)
    assert isinstance(step, Qwen2DecodeStep)
    token = torch.tensor([[9]])
    for _ in range(6):
        got = step(token, ours)
        want = llm(input_ids=token, past_key_values=theirs, use_cache=True).logits[:, -1]
        torch.testing.assert_close(got, want, **CLOSE)
        token = want.argmax(-1, keepdim=True)
    for a, b in zip(ours.layers, theirs.layers):
        torch.testing.assert_close(a.keys, b.keys, **CLOSE)
        torch.testing.assert_close(a.values, b.values, **CLOSE)


@torch.inference_mode()
def test_left_padded_rows_with_their_own_positions_match_transformers(llm):
    rows = [[0, 0, 7, 8], [5, 6, 7, 8]]  # the first row is left-padded by two
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = torch.tensor([[2], [4]])
    tokens = torch.tensor([[11], [12]])
    prefill = (mask[:, :-1], torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]]))
    ours, theirs = _prefilled(llm, rows, *prefill), _prefilled(llm, rows, *prefill)
    got = decode_step(llm)(tokens, ours, positions, mask)
    want = llm(
        input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=theirs, use_cache=True
    ).logits[:, -1]
    torch.testing.assert_close(got, want, **CLOSE)
    # The padded row predicts exactly what it predicts unpadded: padding is invisible.
    alone = _prefilled(llm, [[7, 8]])
    torch.testing.assert_close(decode_step(llm)(tokens[:1], alone), got[:1], **CLOSE)


@torch.inference_mode()
def test_other_models_keep_transformers_forward():
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    llama = LlamaForCausalLM(config).eval()
    assert not Qwen2DecodeStep.supports(llama)
    cache = _prefilled(llama, [[1, 2, 3]])
    logits = decode_step(llama)(torch.tensor([[4]]), cache)
    assert logits.shape == (1, 64) and cache.get_seq_length() == 4
    windowed = Qwen2ForCausalLM(tiny.llm_config(64))
    windowed.config.use_sliding_window = True
    assert not Qwen2DecodeStep.supports(windowed)
    offloaded = Qwen2ForCausalLM(tiny.llm_config(64))
    offloaded.hf_device_map = {"model.embed_tokens": 0, "model.layers": "cpu"}  # as accelerate marks a split model
    assert not Qwen2DecodeStep.supports(offloaded)
    offloaded.hf_device_map = {"": 0}  # one device: nothing moves at call time
    assert Qwen2DecodeStep.supports(offloaded)


@torch.inference_mode()
def test_bfloat16_steps_match_transformers_in_bfloat16(llm):
    half = Qwen2ForCausalLM(llm.config).eval()
    half.load_state_dict(llm.state_dict())
    half = half.to(torch.bfloat16)
    ours, theirs = _prefilled(half, [[3, 1, 4, 1, 5]]), _prefilled(half, [[3, 1, 4, 1, 5]])
    token = torch.tensor([[9]])
    got = decode_step(half)(token, ours)
    want = half(input_ids=token, past_key_values=theirs, use_cache=True).logits[:, -1]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@torch.inference_mode()
def test_positions_past_the_first_rope_table_match_transformers(llm):
    """The cos/sin table starts at 256 positions and grows: steps on both sides of that edge."""
    step = _steps_match_transformers(llm, [(7 * i) % 64 for i in range(250)], steps=12, atol=1e-5)
    assert step._table[0].shape[0] >= 262


@torch.inference_mode()
def test_a_length_dependent_rope_keeps_the_rotary_module():
    """Dynamic NTK scaling changes the frequencies with the length, so no table is kept for it."""
    torch.manual_seed(1)
    config = tiny.llm_config(64)
    config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    config.max_position_embeddings = 16  # a 20-token context goes past it, where the scaling starts
    model = Qwen2ForCausalLM(config).eval()
    step = _steps_match_transformers(model, [(3 * i) % 64 for i in range(18)], steps=4, atol=1e-6)
    assert step._table is None


def _steps_match_transformers(model, prompt: list[int], steps: int, atol: float):
    """Greedy steps after `prompt` through the lean step and through transformers' forward, compared
    at every step; returns the lean step."""
    ours, theirs = _prefilled(model, [prompt]), _prefilled(model, [prompt])
    step, token = decode_step(model), torch.tensor([[5]])
    for _ in range(steps):
        got = step(token, ours)
        want = model(input_ids=token, past_key_values=theirs, use_cache=True).logits[:, -1]
        torch.testing.assert_close(got, want, rtol=CLOSE["rtol"], atol=max(atol, CLOSE["atol"]))
        token = want.argmax(-1, keepdim=True)
    return step


@torch.inference_mode()
def test_weights_stored_for_vectors_keep_their_values_and_save_as_before(tmp_path):
    """On CPU the step stores each weight it reads transposed, in place; every other reader (the
    prefill, LoRA, `save_pretrained`) still sees the same (out, in) values."""
    torch.manual_seed(2)
    model = Qwen2ForCausalLM(tiny.llm_config(64)).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as SmolLM2's
    before = {name: p.clone() for name, p in model.named_parameters()}
    decode_step(model)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.stride(0) == 1  # stored (in, out): the arranged layout is in use
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    model.save_pretrained(tmp_path)
    again = Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    for name, param in again.named_parameters():
        assert torch.equal(param, before[name]), name
    decode_step(model)  # a second step on the same model rearranges nothing again
    assert model.model.layers[0].self_attn.q_proj.weight.data_ptr() == q.data_ptr()


@torch.inference_mode()
@pytest.mark.parametrize("threads", [1, 3])
def test_any_thread_count_gives_transformers_logits(threads):
    """The arranged weights are multiplied in one slice per thread: one slice, and a count that
    divides no projection but the head's evenly, compute the same step."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(4)
        model = Qwen2ForCausalLM(tiny.llm_config(64)).eval()
        _steps_match_transformers(model, [3, 1, 4, 1, 5, 9], steps=4, atol=1e-6)
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def test_a_kept_view_of_the_cache_is_never_written_over(llm):
    """Keys and values grow in place (decode_step._append); a view taken of them earlier, or a cache
    cropped back, keeps its values while the step goes on."""
    cache = _prefilled(llm, [[3, 1, 4, 1, 5]])
    step, token = decode_step(llm), torch.tensor([[9]])
    for _ in range(3):
        step(token, cache)
    kept = cache.layers[0].keys
    frozen = kept.clone()
    cache.crop(-2)  # back over positions `kept` holds: the next step writes where its 7th was
    for _ in range(3):
        step(token, cache)
    assert torch.equal(kept, frozen)
    reference = _prefilled(llm, [[3, 1, 4, 1, 5, 9, 9, 9, 9]])
    torch.testing.assert_close(cache.layers[0].keys, reference.layers[0].keys, **CLOSE)


def test_weights_arranged_under_inference_mode_still_train():
    """A first step under inference_mode (as serving runs it) leaves weights autograd can use."""
    torch.manual_seed(5)
    model = Qwen2ForCausalLM(tiny.llm_config(64))
    with torch.inference_mode():
        decode_step(model)(torch.tensor([[1]]), _prefilled(model, [[2, 3]]))
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
