"""The released checkpoint layout (docs/paper.md §7, §8) loads into our classes and computes what Qwen v1 does.

A tiny checkpoint is written here in the released layout (Qwen-v1 names, pickled shards + index,
LoRA tensors, a `qwen.tiktoken` vocabulary); the expected logits come from an independent Qwen-v1
forward written from the reference facts, not from our model code.
"""

import base64
import json
import math
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import tiktoken
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import tiny
from blsp_emo.__main__ import main
from blsp_emo.model import checkpoint
from blsp_emo.model.config import BlspEmoConfig, whisper_large_v2_encoder
from blsp_emo.model.model import SpeechEmbeddings, SpeechPrompt
from blsp_emo.prompts import SYSTEM_PLAIN, header, system_block
from blsp_emo.released import convert as released
from blsp_emo.released.qwen_tokenizer import PAT_STR, SPECIAL_TOKENS, load_qwen_tokenizer

D, FFN, LAYERS, HEADS, RANK, ALPHA, D_INNER = 48, 40, 2, 4, 4, 8.0, 16
TEXTS = ["Hello world", " Hello world", "I'm sorry... it's 2024!\n\n  ok", "Héllo wörld ✓ 你好", "e\u0301 <|im_end|>x"]


def synthetic_ranks() -> dict[bytes, int]:
    """A small byte-level BPE vocabulary in tiktoken's form: token bytes -> rank 0..n-1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=500, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(tiny.CORPUS + TEXTS, trainer)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    return {bytes(byte_of[c] for c in token): i for token, i in tok.get_vocab().items()}


def write_tiktoken(ranks: dict[bytes, int], path: Path) -> None:
    lines = (f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items())
    path.write_text("".join(sorted(lines, key=lambda line: int(line.split()[1]))))


def released_config(vocab_size: int) -> dict:
    qwen = {
        "architectures": ["QWenLMHeadModel"],
        "model_type": "qwen",
        "hidden_size": D,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "kv_channels": D // HEADS,
        "intermediate_size": 2 * FFN,
        "layer_norm_epsilon": 1e-6,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "seq_length": 8192,
        "max_position_embeddings": 8192,
        "vocab_size": vocab_size,
        "no_bias": True,
        "tie_word_embeddings": False,
        "use_dynamic_ntk": True,
        "use_logn_attn": True,
        "use_flash_attn": False,
        "bf16": False,
        "fp16": False,
    }
    lora = {
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": False,
        "init_lora_weights": True,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.05,
        "peft_type": "LORA",
        "r": RANK,
        "target_modules": ["c_attn", "c_proj", "w1", "w2"],
    }
    return {
        "architectures": ["Blsp2Model"],
        "adapter_type": "subsampler",
        "adapter_hidden_layers": 0,
        "adapter_inner_dim": D_INNER,
        "conv_kernel_sizes": "5,5,5",
        "kd_temperature": 2,
        "lora_config": lora,
        "lora_scope": "audio",
        "num_emotions": 5,
        "num_pre_cif_layers": 4,
        "num_post_cif_layers": 4,
        "qwen_config": qwen,
        "whisper_config": tiny.encoder_config().to_dict(),
    }


def released_state(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the released names and shapes (§7, §8.1); norms scatter around 1."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: 0.2 * torch.randn(*shape, generator=g)  # noqa: E731
    torch.manual_seed(seed)
    enc = tiny.encoder_config()
    sd = {f"whisper_model.{k}": v for k, v in WhisperEncoder(enc).state_dict().items()}
    e = enc.d_model
    for i, c_out in enumerate([2 * e, 2 * e, 2 * D]):  # conv k5 + GLU; the last widens to the LLM
        sd[f"adapter.subsampler.conv_layers.{i}.weight"] = rand(c_out, e, 5)
        sd[f"adapter.subsampler.conv_layers.{i}.bias"] = rand(c_out)
    sd |= {
        "adapter.fc1.weight": rand(D_INNER, D),
        "adapter.fc2.weight": rand(D, D_INNER),
        "adapter.speech_ln.weight": 1 + rand(D),
        "adapter.speech_ln.bias": rand(D),
        "hidden2emotion.weight": rand(5, D),
    }
    q = "qwen_model.model."
    sd |= {
        q + "transformer.wte.weight": rand(vocab_size, D),
        q + "transformer.ln_f.weight": 1 + rand(D),
        q + "lm_head.weight": rand(vocab_size, D),
    }
    shapes = {
        "attn.c_attn": (3 * D, D),
        "attn.c_proj": (D, D),
        "mlp.w1": (FFN, D),
        "mlp.w2": (FFN, D),
        "mlp.c_proj": (D, FFN),
    }
    for n in range(LAYERS):
        h = f"{q}transformer.h.{n}."
        sd |= {h + "ln_1.weight": 1 + rand(D), h + "ln_2.weight": 1 + rand(D), h + "attn.c_attn.bias": rand(3 * D)}
        for module, (d_out, d_in) in shapes.items():
            sd[h + module + ".weight"] = rand(d_out, d_in)
            sd[h + module + ".lora_A.default.weight"] = rand(RANK, d_in)
            sd[h + module + ".lora_B.default.weight"] = rand(d_out, RANK)
    return sd


def write_released(root: Path, state: dict, config: dict, ranks: dict, shards: int = 2) -> Path:
    """The released folder layout: config.json, pytorch_model-*.bin + index, qwen.tiktoken."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    write_tiktoken(ranks, root / "qwen.tiktoken")
    names, weight_map = list(state), {}
    for s in range(shards):
        file = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = names[s * len(names) // shards : (s + 1) * len(names) // shards]
        torch.save({k: state[k] for k in part}, root / file)
        weight_map |= {k: file for k in part}
    (root / released.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


@pytest.fixture(scope="module")
def ranks():
    return synthetic_ranks()


@pytest.fixture(scope="module")
def release(tmp_path_factory, ranks):
    vocab = len(ranks) + len(SPECIAL_TOKENS) + 9  # the release also has spare embedding rows
    state, config = released_state(vocab), released_config(vocab)
    return write_released(tmp_path_factory.mktemp("release"), state, config, ranks), state, config


@pytest.fixture(scope="module")
def loaded(release):
    return released.load_released(release[0])


def qwen_v1_logits(sd, cfg, embeds, lora_mask=None):
    """Qwen v1 forward from the reference facts (§8): fused c_attn with bias, RMSNorm, rotate-half RoPE
    (base rotary_emb_base), MLP c_proj(w1(x) * silu(w2(x))), untied lm_head; the released audio-scoped
    LoRA adds B·A·x·alpha/r at positions where `lora_mask` is 1."""
    q, qc = "qwen_model.model.", cfg["qwen_config"]
    heads, hd, eps = qc["num_attention_heads"], qc["kv_channels"], qc["layer_norm_epsilon"]
    scaling = cfg["lora_config"]["lora_alpha"] / cfg["lora_config"]["r"]

    def linear(x, name):
        y = x @ sd[name + ".weight"].T + sd.get(name + ".bias", 0)
        if lora_mask is not None and name + ".lora_A.default.weight" in sd:
            delta = x @ sd[name + ".lora_A.default.weight"].T @ sd[name + ".lora_B.default.weight"].T
            y = y + delta * scaling * lora_mask[..., None]
        return y

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    B, T, _ = embeds.shape
    inv_freq = 1.0 / qc["rotary_emb_base"] ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.cat([torch.outer(torch.arange(T).float(), inv_freq)] * 2, dim=-1)  # (T, hd)

    def rope(t):  # (B, H, T, hd)
        rotated = torch.cat([-t[..., hd // 2 :], t[..., : hd // 2]], dim=-1)
        return t * angles.cos() + rotated * angles.sin()

    causal = torch.full((T, T), float("-inf")).triu(1)
    x = embeds
    for n in range(qc["num_hidden_layers"]):
        h = f"{q}transformer.h.{n}."
        qkv = linear(rms(x, sd[h + "ln_1.weight"]), h + "attn.c_attn")
        qh, kh, vh = (t.view(B, T, heads, hd).transpose(1, 2) for t in qkv.split(qc["hidden_size"], dim=-1))
        att = (rope(qh) @ rope(kh).transpose(-1, -2) / math.sqrt(hd) + causal).softmax(-1)
        x = x + linear((att @ vh).transpose(1, 2).reshape(B, T, -1), h + "attn.c_proj")
        y = rms(x, sd[h + "ln_2.weight"])
        x = x + linear(linear(y, h + "mlp.w1") * F.silu(linear(y, h + "mlp.w2")), h + "mlp.c_proj")
    return rms(x, sd[q + "transformer.ln_f.weight"]) @ sd[q + "lm_head.weight"].T


# --- tokenizer -----------------------------------------------------------------------------------


def test_tokenizer_matches_tiktoken(ranks, release):
    tok = load_qwen_tokenizer(release[0])
    n = len(ranks)
    ref = tiktoken.Encoding(
        "qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={t: n + i for i, t in enumerate(SPECIAL_TOKENS)}
    )
    assert tok.special_ids == {"<|endoftext|>": n, "<|im_start|>": n + 1, "<|im_end|>": n + 2}
    assert tok.hf.convert_tokens_to_ids("<|extra_204|>") == n + 207
    for text in TEXTS + tiny.CORPUS[:10]:
        # QWenTokenizer: NFC first, and special-token strings in text are plain text.
        assert tok.encode(text) == ref.encode(unicodedata.normalize("NFC", text), disallowed_special=()), text
    assert tok.decode(tok.encode(TEXTS[4]) + [n + 2]) == "é <|im_end|>x"  # typed: text; the id: a stop


REAL_VOCAB = os.environ.get("QWEN_TIKTOKEN")  # e.g. dashscope-1.20.0's dashscope/resources/qwen.tiktoken


@pytest.mark.skipif(not (REAL_VOCAB and Path(REAL_VOCAB).is_file()), reason="set QWEN_TIKTOKEN to a qwen.tiktoken")
def test_reference_ids_with_the_real_vocabulary():
    tok = load_qwen_tokenizer(REAL_VOCAB)
    start = tok.encode_pieces([*system_block(SYSTEM_PLAIN), *header("user")]).input_ids
    assert start == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
    assert tok.encode("Hello world") == [9707, 1879] and tok.encode("assistant") == [77091]
    assert len(tok.hf) == 151851 and tok.hf.convert_tokens_to_ids("<|extra_204|>") == 151850


# --- weights ---------------------------------------------------------------------------------------


def test_text_logits_equal_qwen_v1(loaded, release):
    model, _ = loaded
    _, state, config = release
    ids = torch.randint(0, config["qwen_config"]["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(1))
    ours = model.llm(input_ids=ids).logits
    ref = qwen_v1_logits(state, config, state["qwen_model.model.transformer.wte.weight"][ids])
    assert (ours - ref).abs().max() < 1e-5


def test_speech_prefill_equals_qwen_v1_with_lora_at_speech_positions(loaded, release):
    model, _ = loaded
    _, state, config = release
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 4:9] = True
    rows = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    ours = model.speech_forward(SpeechPrompt(ids, mask), SpeechEmbeddings(rows[None], torch.tensor([5]))).logits
    embeds = state["qwen_model.model.transformer.wte.weight"][ids].clone()
    embeds[mask] = rows
    ref = qwen_v1_logits(state, config, embeds, lora_mask=mask.float())
    assert (ours - ref).abs().max() < 1e-5
    assert (ref - qwen_v1_logits(state, config, embeds)).abs().max() > 1e-2  # the LoRA did matter


def test_copied_parts_are_the_released_tensors(loaded, release):
    ours = loaded[0].state_dict()
    state = release[1]
    assert torch.equal(ours["emotion_head.weight"], state["hidden2emotion.weight"])
    for name, tensor in state.items():
        if name.startswith(("whisper_model.", "adapter.")):
            assert torch.equal(ours[name.replace("whisper_model.", "encoder.", 1)], tensor), name


# --- refusals ---------------------------------------------------------------------------------------


def _put(name, tensor):
    return lambda s, c: s.__setitem__(name, tensor)


def _set(key, value):
    return lambda s, c: c.__setitem__(key, value)


L0 = "qwen_model.model.transformer.h.0."


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("adapter_type", "cformer"), "adapter_type 'cformer' is not supported"),
        (_set("lora_scope", "global"), "lora_scope 'global' is not supported"),
        (_put("vision_tower.weight", torch.zeros(1)), "unknown tensor 'vision_tower.weight'"),
        (_put(L0 + "attn.c_attn.extra", torch.zeros(1)), f"unknown Qwen v1 tensor '{L0}attn.c_attn.extra'"),
        (_put("whisper_model.layers.7.fc1.weight", torch.zeros(1)), "'whisper_model.layers.7.fc1.weight' maps to"),
        (_put(L0 + "mlp.w1.weight", torch.zeros(FFN + 1, D)), f"'{L0}mlp.w1.weight' has shape (41, 48)"),
        (
            lambda s, c: s.pop(L0 + "mlp.w2.weight"),
            f"{L0}mlp.w2.weight (ours: llm.model.layers.0.mlp.gate_proj.weight)",
        ),
    ],
)
def test_unmappable_checkpoints_are_refused(tmp_path, ranks, release, edit, message):
    state, config = dict(release[1]), json.loads(json.dumps(release[2]))
    edit(state, config)
    with pytest.raises(released.ReleasedCheckpointError, match=re.escape(message)):
        released.load_released(write_released(tmp_path / "r", state, config, ranks))


def test_index_and_shards_that_disagree_name_the_tensor(tmp_path, ranks, release):
    root = write_released(tmp_path / "one", release[1], release[2], ranks, shards=1)
    state = {k: v for k, v in release[1].items() if k != "hidden2emotion.weight"}
    torch.save(state, root / "pytorch_model-00001-of-00001.bin")
    with pytest.raises(released.ReleasedCheckpointError, match=re.escape("lacks ['hidden2emotion.weight'], which")):
        released.load_released(root)
    root = write_released(tmp_path / "two", release[1], release[2], ranks)
    (root / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(released.ReleasedCheckpointError, match=r"puts \S+ \(and \d+ more\) in pytorch_model-00002-of"):
        released.load_released(root)


def test_the_7b_config_is_our_default_architecture():
    """The release's config values (§1.1, §1.2, §7) give BlspEmoConfig() (Qwen-7B-Chat as Qwen2, §8.2)."""
    qwen = released_config(151936)["qwen_config"] | {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "kv_channels": 128,
        "intermediate_size": 22016,
    }
    raw = released_config(151936) | {
        "qwen_config": qwen,
        "adapter_inner_dim": 512,
        "whisper_config": whisper_large_v2_encoder().to_dict(),
    }
    raw["lora_config"] |= {"r": 16, "lora_alpha": 16}
    ours, default = released.released_config(raw).to_dict(), BlspEmoConfig().to_dict()
    for key in (
        "conv_kernel_sizes",
        "conv_stride",
        "adapter_inner_dim",
        "lora_rank",
        "lora_alpha",
        "emotions",
        "lora_target_modules",
        "llm_config",
        "encoder_config",
    ):
        assert ours[key] == default[key], key


# --- entry points -----------------------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.slow
def test_convert_cli_round_trip(tmp_path, release, clip_path, capsys):
    src, dst = release[0], tmp_path / "converted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    cli = [sys.executable, "-m", "blsp_emo"]
    subprocess.run([*cli, "convert", str(src), str(dst)], check=True, env=env, capture_output=True)
    assert (dst / "model.safetensors").is_file() and (dst / "tokenizer.json").is_file()
    respond = ["respond", str(clip_path), "--json", "--greedy", "--max-new-tokens", "5", "--model"]
    out = subprocess.run([*cli, *respond, str(dst)], check=True, env=env, capture_output=True, text=True).stdout
    reply = json.loads(out)
    assert reply["token_ids"] and set(reply["emotion_scores"]) == {"neutral", "happy", "angry", "sad", "surprise"}
    # Loading the released folder directly converts in memory and answers the same.
    assert main([*respond, str(src)]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == reply["token_ids"]


def test_convert_to_bfloat16(tmp_path, release):
    checkpoint.convert_released(release[0], tmp_path / "bf16", dtype="bfloat16")
    model, _ = checkpoint.load_model(str(tmp_path / "bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_pinned_hub_id_fails_at_once_offline(capsys):
    assert main(["respond", "x.wav", "--model", "cwang621/blsp-emo", "--revision", "main"]) == 2
    assert "cwang621/blsp-emo" in capsys.readouterr().err


def test_offloaded_llm_blocks_still_get_lora(loaded, release, tmp_path):
    """`--device auto` on a small GPU: blocks past the budget are offloaded, the rest stays on GPU 0.
    Without a GPU here, CPU stands in for GPU 0 and disk for CPU RAM: the same accelerate hooks."""
    from accelerate import dispatch_model

    device_map = checkpoint.offload_device_map(loaded[0], gpu_bytes=400_000)
    assert {device_map[k] for k in ("encoder", "adapter", "emotion_head", "lora")} == {0}
    offloaded = [k for k, v in device_map.items() if v == "cpu"]
    assert offloaded and all(k.startswith("llm.") for k in offloaded)
    stand_in = {k: "cpu" if v == 0 else "disk" for k, v in device_map.items()}
    model = dispatch_model(released.load_released(release[0])[0], stand_in, main_device="cpu", offload_dir=tmp_path)
    ids, mask = torch.arange(8)[None] + 3, torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    speech = SpeechEmbeddings(torch.randn(1, 3, D), torch.tensor([3]))
    with torch.no_grad():
        expected = loaded[0].speech_forward(SpeechPrompt(ids, mask), speech).logits
        assert torch.equal(model.speech_forward(SpeechPrompt(ids, mask), speech).logits, expected)
