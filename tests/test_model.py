"""BLSP-Emo model properties: LoRA only where speech is, exact base behaviour on text, losses, save/load."""

import pytest
import torch
from transformers import Qwen2ForCausalLM

import tiny
from blsp_emo.decoding.generation import GenerationOptions
from blsp_emo.model.checkpoint import load_model, save_model
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel, SpeechEmbeddings, SpeechPrompt, TrainingBatch
from blsp_emo.model.processor import build_prompt, clip_features, pad_rows, speech_lengths
from blsp_emo.prompts import (
    STAGE1_INSTRUCTION,
    SYSTEM_PLAIN,
    Speech,
    Turn,
    chat_pieces,
    instruction_pieces,
    response_pieces,
)


def text_ids(tok, text="I got the letter from the office today."):
    return torch.tensor([tok.encode_pieces(chat_pieces(SYSTEM_PLAIN, [Turn("user", text)])).input_ids])


def speech_prompt(model, tok, seconds=(2.0,)):
    clips = [tiny.tone(s, 180.0 + 40 * i) for i, s in enumerate(seconds)]
    turns = [Turn("user", audio=c) for c in clips]
    prompt = build_prompt(tok, chat_pieces(SYSTEM_PLAIN, turns), clips, model.config)
    return prompt, model.encode_speech(prompt.input_features, prompt.frame_counts)


@torch.no_grad()
def test_text_only_logits_equal_the_bare_llm(model_and_tokenizer):
    model, tok = model_and_tokenizer
    assert any(p.lora_B.weight.abs().sum() > 0 for p in model.lora.pairs())
    bare = Qwen2ForCausalLM(model.llm.config).eval()
    bare.load_state_dict(model.llm.state_dict())
    ids = text_ids(tok)
    prompt = SpeechPrompt(ids, torch.zeros_like(ids, dtype=torch.bool))
    ours = model.speech_forward(prompt, None).logits
    assert torch.equal(ours, bare(input_ids=ids).logits)


@torch.no_grad()
def test_lora_changes_only_speech_positions_and_after(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt, speech = speech_prompt(model, tok)
    embeds = model.embed_prompt(prompt, speech)
    base = model.llm(inputs_embeds=embeds).logits
    with_lora = model.speech_forward(prompt, speech).logits
    first = int(prompt.speech_mask[0].nonzero()[0])
    assert torch.equal(with_lora[:, :first], base[:, :first])  # causal: text before speech untouched
    assert not torch.allclose(with_lora[:, first:], base[:, first:])


@torch.no_grad()
def test_decoded_tokens_use_base_weights(model_and_tokenizer):
    """After the prefill, each decode step runs with no LoRA: the hooks add nothing."""
    model, tok = model_and_tokenizer
    prompt, speech = speech_prompt(model, tok)
    calls = []
    hooks = [
        m.register_forward_hook(lambda mod, a, out: calls.append(a[0].shape[1]))
        for m in model.llm.modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == model.llm.config.hidden_size and hasattr(m, "weight")
    ]
    model.lora.pairs().__next__().lora_A.register_forward_hook(
        lambda mod, a, out: calls.append(("lora", a[0].shape[1]))
    )
    list(model.generate_stream(prompt, speech, GenerationOptions(greedy=True, max_new_tokens=5), frozenset(), 0))
    for h in hooks:
        h.remove()
    lora_calls = [c for c in calls if isinstance(c, tuple)]
    assert lora_calls == [("lora", prompt.input_ids.shape[1])]  # once, over the whole prefill


def test_splice_count_mismatch_is_a_clear_error(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt, speech = speech_prompt(model, tok)
    speech.lengths = speech.lengths - 1
    with pytest.raises(ValueError, match=r"do not match: positions \d+, embeddings \d+"):
        model.embed_prompt(prompt, speech)


def test_speech_token_count_for_5s(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt, speech = speech_prompt(model, tok, seconds=(5.0,))
    assert speech.lengths.tolist() == [32] and int(prompt.speech_mask.sum()) == 32
    assert speech.embeds.shape == (1, 32, model.config.llm_config.hidden_size)


def test_clip_embeddings_do_not_depend_on_the_batch(model_and_tokenizer):
    model, tok = model_and_tokenizer
    one = tiny.tone(1.5, 300.0)
    alone = model.encode_speech(*clip_features([one], model.config))
    batched = model.encode_speech(*clip_features([one, tiny.tone(6.0)], model.config))
    n = int(alone.lengths[0])
    torch.testing.assert_close(batched.embeds[0, :n], alone.embeds[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.emotion_logits(batched)[0], model.emotion_logits(alone)[0], atol=1e-5, rtol=1e-5)


def test_emotion_head_pools_only_valid_positions(model_and_tokenizer):
    from blsp_emo.model.model import SpeechEmbeddings

    model, _ = model_and_tokenizer
    embeds = torch.randn(1, 10, model.config.llm_config.hidden_size)
    garbage = embeds.clone()
    garbage[:, 6:] = 1e3
    a = model.emotion_logits(SpeechEmbeddings(embeds, torch.tensor([6])))
    b = model.emotion_logits(SpeechEmbeddings(garbage, torch.tensor([6])))
    assert torch.equal(a, b)
    assert torch.allclose(a, model.emotion_head(embeds[:, :6].mean(1)), atol=1e-6)


def test_save_load_identical_logits_and_config(tmp_path, model_and_tokenizer):
    model, tok = model_and_tokenizer
    save_model(model, tok, tmp_path)
    loaded, tok2 = load_model(str(tmp_path))
    volatile = {"_name_or_path", "dtype"}

    def stable(d):
        return {k: stable(v) if isinstance(v, dict) else v for k, v in d.items() if k not in volatile}

    assert stable(loaded.config.to_dict()) == stable(model.config.to_dict())
    assert isinstance(loaded.config, BlspEmoConfig) and loaded.config.emotions == model.config.emotions
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    prompt, speech = speech_prompt(model, tok)
    with torch.no_grad():
        a = model.speech_forward(prompt, speech).logits
        b = loaded.speech_forward(prompt, loaded.encode_speech(prompt.input_features, prompt.frame_counts)).logits
    assert torch.equal(a, b)
    assert tok2.encode("hello there") == tok.encode("hello there")


def test_load_refuses_missing_tensors(tmp_path, tokenizer):
    stage1, _ = tiny.model(lora_rank=0, tok=tokenizer)
    save_model(stage1, tokenizer, tmp_path)
    config = BlspEmoConfig.from_pretrained(tmp_path)
    config.lora_rank = 4
    config.save_pretrained(tmp_path)  # now the config promises LoRA tensors the file lacks
    with pytest.raises(ValueError, match="missing_keys"):
        load_model.__wrapped__(str(tmp_path))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="conv_kernel_sizes"):
        BlspEmoConfig(conv_kernel_sizes=(4,))
    with pytest.raises(ValueError, match="lora_target_modules"):
        BlspEmoConfig(lora_target_modules=("c_attn",))


def batch_for(model, tok, transcript="I got the letter from the office today.", response="That sounds wonderful."):
    clip = tiny.tone(2.0)
    features, counts = clip_features([clip], model.config)
    target = response_pieces(response, early_stop=False)
    speech_rows = [
        tok.encode_pieces(
            instruction_pieces(SYSTEM_PLAIN, STAGE1_INSTRUCTION, Speech(0)),
            speech_lengths(counts, model.config),
            target,
        )
    ]
    text_rows = [tok.encode_pieces(instruction_pieces(SYSTEM_PLAIN, STAGE1_INSTRUCTION, transcript), (), target)]
    ids, mask, attn, labels = pad_rows(speech_rows, tok.pad_id)
    tids, tmask, tattn, tlabels = pad_rows(text_rows, tok.pad_id)
    return TrainingBatch(
        SpeechPrompt(ids, mask, attn, features, counts, labels),
        SpeechPrompt(tids, tmask, tattn, None, None, tlabels),
        torch.tensor([2]),
    )


def test_losses_are_finite_and_named(model_and_tokenizer):
    model, tok = model_and_tokenizer
    out = model(batch_for(model, tok), losses=("response_kl", "response_ce", "input_er"))
    assert set(out.losses) == {"response_kl", "response_ce", "input_er"}
    assert all(torch.isfinite(v) and v >= 0 for v in out.losses.values())
    assert torch.isclose(out.loss, sum(out.losses.values()))
    with pytest.raises(ValueError, match="unknown losses"):
        model(batch_for(model, tok), losses=("bogus",))


def test_kl_is_zero_when_speech_looks_exactly_like_the_transcript(tokenizer, monkeypatch):
    """If the adapter produced the transcript's own token embeddings and no LoRA acted, the student
    would be the teacher: response_kl must be 0. This pins the alignment of the two sequences."""
    model, tok = tiny.model(lora_rank=0, tok=tokenizer)
    with torch.no_grad():  # a random tiny LLM (weights std 0.02) barely reads its context: sharpen it
        model.llm.get_input_embeddings().weight.mul_(50)
        for m in model.llm.model.layers.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(10)
    transcript = "I got the letter from the office today."
    ids = torch.tensor(tok.encode(transcript))
    embeds = model.llm.get_input_embeddings()(ids)[None]

    def fake_encode(features, counts):
        return SpeechEmbeddings(embeds, torch.tensor([len(ids)]))

    monkeypatch.setattr(model, "encode_speech", fake_encode)
    monkeypatch.setattr("blsp_emo.model.processor.speech_lengths", lambda counts, config: [len(ids)])
    import blsp_emo.model.processor as processor

    batch = batch_for(model, tok, transcript)
    target = response_pieces("That sounds wonderful.", False)
    row = tok.encode_pieces(instruction_pieces(SYSTEM_PLAIN, STAGE1_INSTRUCTION, Speech(0)), [len(ids)], target)
    sids, smask, sattn, slabels = processor.pad_rows([row], tok.pad_id)
    batch.speech = SpeechPrompt(sids, smask, sattn, batch.speech.input_features, batch.speech.frame_counts, slabels)
    kl = model(batch, losses=("response_kl",)).loss
    assert kl.abs() < 1e-6
    # ... and speech that sounds like other words gives a clearly positive divergence
    other = model.llm.get_input_embeddings()(
        torch.tensor(tok.encode("That sounds wonderful, tell me more!")[: len(ids)])
    )[None]
    monkeypatch.setattr(model, "encode_speech", lambda f, c: SpeechEmbeddings(other, torch.tensor([other.shape[1]])))
    monkeypatch.setattr("blsp_emo.model.processor.speech_lengths", lambda counts, config: [other.shape[1]])
    row = tok.encode_pieces(instruction_pieces(SYSTEM_PLAIN, STAGE1_INSTRUCTION, Speech(0)), [other.shape[1]], target)
    sids, smask, sattn, slabels = processor.pad_rows([row], tok.pad_id)
    batch.speech = SpeechPrompt(sids, smask, sattn, batch.speech.input_features, batch.speech.frame_counts, slabels)
    assert model(batch, losses=("response_kl",)).loss > 1e-2


def test_unlabelled_emotion_contributes_zero(model_and_tokenizer):
    model, tok = model_and_tokenizer
    batch = batch_for(model, tok)
    batch.emotion_labels = torch.tensor([-100])
    assert model(batch, losses=("input_er",)).loss == 0


def test_full_scale_shapes_on_meta_device():
    """The default config is the released architecture: LoRA and head sizes from docs/paper.md §1."""
    with torch.device("meta"):
        model = BlspEmoModel(BlspEmoConfig())
    lora = sum(p.numel() for p in model.lora.parameters())
    # 32 blocks x (q,k,v,o: 4 x 16 x (4096+4096)) + (gate, up, down: 3 x 16 x (4096+11008))
    assert lora == 32 * (4 * 16 * 8192 + 3 * 16 * 15104)
    assert sum(p.numel() for p in model.emotion_head.parameters()) == 20_480
    assert sum(p.numel() for p in model.encoder.parameters()) == 636_784_640  # docs/paper.md §7, positions included


@torch.no_grad()
def test_a_deep_copy_applies_its_own_lora(model_and_tokenizer):
    import copy

    model, tok = model_and_tokenizer
    twin = copy.deepcopy(model)
    for pair in twin.lora.pairs():
        pair.lora_B.weight.mul_(-1)  # the copy's LoRA now differs from the original's
    prompt, speech = speech_prompt(model, tok)
    ours = model.speech_forward(prompt, speech).logits
    theirs = twin.speech_forward(prompt, speech).logits
    base = model.llm(inputs_embeds=model.embed_prompt(prompt, speech)).logits
    assert not torch.allclose(theirs, base) and not torch.allclose(theirs, ours)
    assert torch.equal(model.speech_forward(prompt, speech).logits, ours)  # the original is untouched


@torch.no_grad()
def test_a_shared_qkv_a_is_the_fused_lora_written_per_linear(tmp_path):
    """One A for q, k and v (the released c_attn LoRA): stored and counted once, used by all three,
    equal to separate pairs whose A's are equal, and saved and loaded without copies."""
    import copy

    tok = tiny.tokenizer()
    separate, _ = tiny.model(lora_rank=4, tok=tok)
    config = BlspEmoConfig.from_dict({**separate.config.to_dict(), "lora_shared_qkv_a": True})
    shared = BlspEmoModel(config, encoder=copy.deepcopy(separate.encoder), llm=copy.deepcopy(separate.llm)).eval()
    layers = separate.config.llm_config.num_hidden_layers
    hidden = separate.config.llm_config.hidden_size
    count = lambda m: sum(p.numel() for p in m.lora.parameters())  # noqa: E731
    assert count(separate) - count(shared) == layers * 2 * hidden * 4  # two A's (k, v) fewer per layer
    keys = [k for k in shared.state_dict() if k.startswith("lora.")]
    assert not [k for k in keys if ("k_proj.lora_A" in k or "v_proj.lora_A" in k)]
    # Give the separate pairs q's A everywhere and the same B's: both compute the same thing.
    state = separate.state_dict()
    for key in list(state):
        if ".k_proj.lora_A" in key or ".v_proj.lora_A" in key:
            state[key] = state[key.replace(".k_proj.", ".q_proj.").replace(".v_proj.", ".q_proj.")]
    separate.load_state_dict(state)
    shared.load_state_dict({k: v for k, v in state.items() if k in shared.state_dict()})
    prompt, speech = speech_prompt(separate, tok)
    assert torch.allclose(separate.speech_forward(prompt, speech).logits, shared.speech_forward(prompt, speech).logits)
    save_model(shared, tok, tmp_path / "m")
    again, _ = load_model(str(tmp_path / "m"))
    assert torch.equal(again.speech_forward(prompt, speech).logits, shared.speech_forward(prompt, speech).logits)
    twin = copy.deepcopy(shared)  # a copy's k and v use the copy's own q A
    pair = next(p for name, p in twin.lora.named_modules() if name.endswith("k_proj"))
    assert any(pair.factor_a is q.lora_A for name, q in twin.lora.named_modules() if name.endswith("q_proj"))
