"""Speed work and `python -m blsp_emo bench`: each speed-up gives the same outputs; the bench reports its schema."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tiny
from blsp_emo.audio import log_mel
from blsp_emo.bench.encoder_window import compare
from blsp_emo.bench.instruments import EncoderTimer, PeakMemory
from blsp_emo.bench.measurements import BenchOptions, Report, Result, bench_clips
from blsp_emo.bench.scales import building_on, random_systems, scale_config, word_tokenizer
from blsp_emo.decoding.generation import GenerationOptions
from blsp_emo.decoding.prefix_cache import PrefixCache, TokenSequence
from blsp_emo.model.config import BlspEmoConfig
from blsp_emo.model.model import BlspEmoModel
from blsp_emo.model.processor import clip_features, frame_counts
from blsp_emo.systems.blsp import BlspSystem
from blsp_emo.systems.cascade import CascadeSystem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREEDY = GenerationOptions(max_new_tokens=8, min_new_tokens=8, greedy=True, seed=0)
RESULT_KEYS = {"system", "clip_s", "first_token_s", "total_s", "encoder_s", "rtf", "peak_rss_mb"}


@pytest.mark.parametrize("seconds", [0.13, 1.0, 4.5, 7.77])
def test_clip_length_features_equal_the_full_window_where_the_encoder_reads(seconds):
    waves = [tiny.tone(seconds), tiny.tone(seconds / 2, 300.0)]
    full, counts = log_mel(waves, 80, 3000)
    short, short_counts = log_mel(waves, 80, 3000, clip_length=True)
    assert short_counts.tolist() == counts.tolist() and short.shape[-1] < 3000
    read = int(counts.max()) + 1  # clip-length encoding reads up to one frame past the longest clip
    assert torch.equal(short[..., :read], full[..., :read])


def test_frame_counts_match_the_feature_extractor(model_and_tokenizer):
    config = model_and_tokenizer[0].config
    clips = [tiny.tone(s) for s in (0.1, 0.10001, 1.234, 9.99)]
    assert frame_counts(clips, config).tolist() == clip_features(clips, config)[1].tolist()


def _conversation(system, clips, texts=()):
    """Answer each clip (then each text, if given) as the next turn; return every reply's token ids."""
    history, ids = [], []
    for i, clip in enumerate(clips):
        reply = system.respond(clip, history=history, options=GREEDY)
        ids.append(reply.token_ids)
        history.extend(reply.turns(clip))
        if i < len(texts):
            reply = system.respond(text=texts[i], history=history, options=GREEDY)
            ids.append(reply.token_ids)
            history.extend(reply.turns(text=texts[i]))
    return ids


def test_kv_reuse_gives_the_replies_of_re_encoding_the_history(model_and_tokenizer):
    model, tok = model_and_tokenizer
    cache = PrefixCache()
    reuse = BlspSystem("blsp-emo", "", model, tok, "Be kind.", True, cache)
    recompute = BlspSystem("blsp-emo", "", model, tok, "Be kind.", True, None)
    clips = [tiny.tone(2.0, 220.0), tiny.tone(3.0, 300.0), tiny.tone(1.5, 180.0)]
    texts = ["I got the letter today.", "That sounds wonderful"]
    assert _conversation(reuse, clips, texts) == _conversation(recompute, clips, texts)
    assert cache.hits >= 4 and 0 < cache.nbytes <= cache.max_bytes


def test_kv_reuse_prefill_logits_match(model_and_tokenizer):
    """The reused prefix plus the new part gives the logits of one prefill over everything."""
    model, tok = model_and_tokenizer
    system = BlspSystem("blsp-emo", "", model, tok, "Be kind.", True, PrefixCache())
    first = tiny.tone(2.0)
    reply = system.respond(first, options=GREEDY)
    history = list(reply.turns(first))
    second = tiny.tone(1.0, 330.0)
    logits = {}
    for label, store in (("reuse", system.prefix_cache), ("full", None)):
        system.prefix_cache = store
        heard, tokens = system._answer(system._user_turn(second, None), tuple(history), GREEDY, 0)
        captured = []
        original = model.llm.forward
        model.llm.forward = lambda *a, **k: captured.append(original(*a, **k)) or captured[-1]  # noqa: B023
        try:
            next(tokens)
        finally:
            model.llm.forward = original
        logits[label] = captured[0].logits[0, -1]
    torch.testing.assert_close(logits["reuse"], logits["full"], atol=1e-4, rtol=1e-4)


def test_a_different_clip_is_never_served_from_another_clips_cache(model_and_tokenizer):
    model, tok = model_and_tokenizer
    a, b = tiny.tone(2.0, 220.0), tiny.tone(2.0, 440.0)  # same length: same token ids, different speech
    seq_a = TokenSequence.of([5, 0, 0, 6], [False, True, True, False], [a])
    seq_b = TokenSequence.of([5, 0, 0, 6], [False, True, True, False], [b])
    assert seq_a.common_prefix(seq_b) == 1 and seq_a.common_prefix(seq_a) == 4
    shared = PrefixCache()
    system = BlspSystem("blsp-emo", "", model, tok, "Be kind.", True, shared)
    alone = BlspSystem("blsp-emo", "", model, tok, "Be kind.", True, None)
    system.respond(a, options=GREEDY)
    assert system.respond(b, options=GREEDY).token_ids == alone.respond(b, options=GREEDY).token_ids


def test_prefix_cache_stays_within_its_byte_bound(model_and_tokenizer):
    model, tok = model_and_tokenizer
    cache = PrefixCache(max_bytes=40_000)
    system = BlspSystem("blsp-emo", "", model, tok, "Be kind.", True, cache)
    for f in (200.0, 260.0, 320.0, 380.0):
        system.respond(tiny.tone(3.0, f), options=GREEDY)
        assert cache.nbytes <= 40_000
    assert len(cache._entries) < 4
    # Each entry holds just its positions (the step's keys have room to grow; an entry copies them).
    held = [t for entry in cache._entries.values() for layer in entry.layers for t in layer]
    assert sum(t.untyped_storage().nbytes() for t in held) == cache.nbytes


def test_cascade_reuses_its_text_history(bundle_dir):
    from blsp_emo import load_system

    cascade = load_system("cascade", model=str(bundle_dir))
    assert cascade.prefix_cache is not None
    cascade.prefix_cache.clear()
    texts = ["alpha", "bravo", "charlie"]
    history, with_cache = [], []
    for text in texts:
        reply = cascade.respond(text=text, history=history, options=GREEDY)
        with_cache.append(reply.token_ids)
        history.extend(reply.turns(text=text))
    assert cascade.prefix_cache.hits == 2
    plain = CascadeSystem("cascade", "", cascade.asr, cascade.llm, cascade.tokenizer, cascade.system_prompt)
    history, without = [], []
    for text in texts:
        reply = plain.respond(text=text, history=history, options=GREEDY)
        without.append(reply.token_ids)
        history.extend(reply.turns(text=text))
    assert with_cache == without


def test_encoder_timer_sees_every_encoder_in_both_modes(bundle_dir, clip_path):
    from blsp_emo import load_system

    system = load_system("cascade-ser", model=str(bundle_dir))  # an ASR and a classifier: two encoders
    timer = EncoderTimer(system)
    try:
        reply = system.respond(str(clip_path), options=GREEDY)
    finally:
        timer.close()
    assert 0 < timer.seconds < reply.timings.total_s
    assert len(timer._handles) == 4


def test_encoders_inside_plain_wrappers_are_found():
    from types import SimpleNamespace

    from blsp_emo.bench.instruments import _whisper_encoders

    asr = tiny.asr()
    system = SimpleNamespace(asr=SimpleNamespace(model=asr, decoder=object()), llm=torch.nn.Linear(2, 2))
    assert _whisper_encoders(system) == [asr.encoder]


def test_peak_memory_sees_an_allocation_inside_the_block():
    with PeakMemory() as before:
        pass
    with PeakMemory() as peak:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MB, touched
        del block
    assert peak.rss_mb >= before.rss_mb + 50


def test_ratios_pair_systems_on_the_same_clip():
    report = Report(
        {},
        {},
        [
            Result("blsp-emo", 5.0, 0.1, 1.0, 0.05, 0.2, 100.0),
            Result("cascade", 5.0, 0.4, 2.0, 0.05, 0.4, 100.0),
            Result("blsp-emo", 1.0, 0.1, 1.0, 0.05, 1.0, 100.0),
        ],
    )
    assert report.ratios() == [{"clip_s": 5.0, "of": "blsp-emo/cascade", "first_token": 0.25, "total": 0.5}]


def test_time_to_first_audio_is_reported_where_a_voice_spoke():
    spoken = Result("blsp-emo", 5.0, 0.1, 1.0, 0.05, 0.2, 100.0, first_audio_s=0.3)
    report = Report({}, {}, [spoken, Result("cascade", 5.0, 0.4, 2.0, 0.05, 0.4, 100.0, first_audio_s=0.6)])
    assert spoken.to_json()["first_audio_s"] == 0.3 and report.ratios()[0]["first_audio"] == 0.5
    silent = Result("blsp-emo", 5.0, 0.1, 1.0, 0.05, 0.2, 100.0)  # --tts none
    assert set(silent.to_json()) == RESULT_KEYS


def test_bench_clips_have_the_asked_lengths():
    clips, source = bench_clips([1.0, 5.0, 30.0])
    assert {s: c.size for s, c in clips.items()} == {1.0: 16000, 5.0: 80000, 30.0: 480000}
    assert all(np.abs(c).max() > 0.01 for c in clips.values()) and source


@pytest.mark.server
def test_bench_json_schema_from_the_command_line(bundle_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "blsp_emo",
            "bench",
            "--json",
            "--model",
            str(bundle_dir),
            "--clips",
            "1,5",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--new-tokens",
            "3",
            "--turns",
            "2",
            "--threads",
            "1",
            "--systems",
            "blsp-emo,cascade",
            "--concurrent",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"machine", "results"} <= set(report) and report["machine"]["cores"] >= 1
    assert [(r["system"], r["clip_s"]) for r in report["results"]] == [
        ("blsp-emo", 1.0),
        ("cascade", 1.0),
        ("blsp-emo", 5.0),
        ("cascade", 5.0),
    ]
    assert report["settings"]["voice"] in ("piper", "espeak", "pyttsx3")  # the app's default voice
    for r in report["results"]:
        assert set(r) - {"first_audio_s"} == RESULT_KEYS  # no first audio: the tiny model's 3 tokens said nothing
        assert 0 < r["first_token_s"] <= r["total_s"] and 0 < r["encoder_s"] < r["total_s"]
        assert r.get("first_audio_s", 1.0) > r["first_token_s"]
        assert r["rtf"] == pytest.approx(r["total_s"] / r["clip_s"]) and r["peak_rss_mb"] > 50
    assert [q["clip_s"] for q in report["ratios"]] == [1.0, 5.0]
    assert {t["system"] for t in report["turns"]} == {"blsp-emo", "cascade"}
    assert all(t["same_tokens"] for t in report["turns"])
    assert report["decode"]["bound_ms_per_token"] > 0
    step, concurrent = report["serving"]["decode_step"], report["serving"]["concurrent"]
    assert step["transformers_ms"] > 0 and step["lean_ms"] > 0
    assert concurrent["replies"] == 3 and concurrent["same_tokens"] and 1 <= concurrent["largest_batch"] <= 3
    assert "one DecodeBatcher" in out.stderr and "Qwen2DecodeStep" in out.stderr
    collection = report["serving"]["collection"]  # freezing leaves the loaded models out of every collection
    assert collection["frozen_tracked"] < collection["tracked"] // 10 and collection["full_ms"] > 0
    assert "\nfull garbage collection, systems loaded:" in out.stderr


@pytest.mark.server
def test_bench_refuses_impossible_settings(bundle_dir):
    with pytest.raises(ValueError):
        BenchOptions(repeats=0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "blsp_emo", "bench", "--scale", "full"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and "--random-weights" in out.stderr and "Traceback" not in out.stderr


def test_full_scale_is_the_released_architecture():
    """`--scale full` builds 8.49 B parameters: the adapter of docs/paper.md §1.1 to the parameter."""
    config = scale_config("full")
    assert config == BlspEmoConfig() or config.to_dict() == BlspEmoConfig().to_dict()
    with building_on("meta", torch.bfloat16):
        model = BlspEmoModel(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.adapter) == 89_412_608
    assert config.encoder_config.d_model == 1280 and config.encoder_config.encoder_layers == 32
    assert config.llm_config.hidden_size == 4096 and config.llm_config.num_hidden_layers == 32
    assert 8.4e9 < count(model) < 8.6e9 and next(model.parameters()).dtype == torch.bfloat16
    assert len(word_tokenizer(config.llm_config.vocab_size).hf) == 151_936


def test_random_systems_answer_with_the_fixed_length(tokenizer):
    config = BlspEmoConfig(tiny.encoder_config(), tiny.llm_config(500), adapter_inner_dim=16, lora_rank=4)
    for system in random_systems(config):
        reply = system.respond(tiny.tone(2.0), options=GREEDY)
        assert len(reply.token_ids) == 8 and reply.text


def test_encoder_window_study_measures_a_change_at_released_semantics(model_and_tokenizer):
    model, tok = model_and_tokenizer
    assert model.config.encode_full_window  # the tiny test model keeps the released default
    results = compare(model, tok, {1.0: tiny.tone(1.0), 4.0: tiny.tone(4.0)}, new_tokens=4, repeats=1)
    assert model.config.encode_full_window  # restored
    for r in results:
        assert r.next_token_kl > 0 and r.logits_rel_diff > 0  # the padding is attended to: outputs change
        assert r.encoder_s_clip > 0 and r.encoder_s_full > 0


@pytest.mark.server
@pytest.mark.gpu
def test_full_scale_random_weights_on_a_gpu():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "blsp_emo",
            "bench",
            "--scale",
            "full",
            "--random-weights",
            "--json",
            "--clips",
            "5",
            "--repeats",
            "2",
            "--new-tokens",
            "16",
            "--turns",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {r["system"] for r in report["results"]} == {"blsp-emo", "cascade"}
    assert all(r["peak_gpu_mb"] > 15_000 for r in report["results"])  # 8.5 B parameters in bf16
