"""Attacks of the hostile review (docs/robustness.md, "Hostile input"): an audio bomb and unbounded text.

Each is refused with one clear line before it costs memory or a model call, and the legitimate
input beside it is still answered.
"""

import shutil
import socket
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

gr = pytest.importorskip("gradio")

import app  # noqa: E402
import tiny  # noqa: E402
import webui.callbacks as callbacks  # noqa: E402
from blsp_emo import GenerationOptions, available_systems  # noqa: E402
from blsp_emo.audio import (  # noqa: E402
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    SAMPLE_RATE,
    AudioFormatError,
    AudioTooLongError,
    load_audio,
)
from blsp_emo.prompts import SYSTEM_EMPATHETIC, SYSTEM_PLAIN, Turn  # noqa: E402
from blsp_emo.systems import base as systems_base  # noqa: E402
from blsp_emo.systems import load_systems  # noqa: E402
from blsp_emo.systems.base import MAX_TEXT_CHARS, PromptTooLongError, TextTooLongError  # noqa: E402
from blsp_emo.systems.blsp import BlspSystem  # noqa: E402
from blsp_emo.tts import NullSynthesizer  # noqa: E402

BOMB_RATE, BOMB_CHANNELS, BOMB_SECONDS = 655_350, 8, 29
MB = 2**20
GREEDY = GenerationOptions(max_new_tokens=8, greedy=True)
SETTINGS = ("blsp-emo", 0.5, 0.5, 8, True, 0)  # system, temperature, top-p, max tokens, greedy, seed


def _peak_mb(fn):
    """What `fn()` returns (or raises) and the peak memory it traced (numpy's allocations included)."""
    load_audio((8000, tiny.tone(0.5, rate=8000)))  # imports librosa and warms the resampler outside the count
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as e:
            result = e
        return result, tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """The review's bomb: a 165 kB FLAC that passes the 30 s check and decodes to 608 MB of float32."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.flac"
    with sf.SoundFile(path, "w", BOMB_RATE, BOMB_CHANNELS, format="FLAC", subtype="PCM_16") as f:
        second = np.full((BOMB_RATE, BOMB_CHANNELS), 0.5)
        for _ in range(BOMB_SECONDS):
            f.write(second)
    assert path.stat().st_size < 300_000
    return path


def test_the_audio_bomb_is_refused_from_its_header_before_decoding(bomb):
    # Before the fix this decoded the whole file: peak 750 MB traced, 32 s (1.9 GB in the server).
    error, peak = _peak_mb(lambda: load_audio(bomb))
    assert isinstance(error, AudioFormatError), error
    message = str(error)
    assert str(bomb) in message and "655,350 Hz" in message and f"{MAX_SAMPLE_RATE:,} Hz" in message
    assert "\n" not in message
    assert peak < 50, f"{peak:.1f} MB traced while refusing the bomb"


def test_the_bomb_as_bytes_and_as_samples_is_refused_too(bomb):
    error, peak = _peak_mb(lambda: load_audio(bomb.read_bytes(), name="upload"))
    assert isinstance(error, AudioFormatError) and "upload: a sample rate of 655,350 Hz" in str(error)
    assert peak < 50
    with pytest.raises(AudioFormatError, match="655,350 Hz"):
        load_audio((BOMB_RATE, np.zeros((10, 2), np.int16)))
    with pytest.raises(AudioFormatError, match=f"9 channels is more than the limit of {MAX_CHANNELS}"):
        load_audio((SAMPLE_RATE, np.zeros((SAMPLE_RATE, 9), np.int16)))


def test_too_many_channels_are_refused_from_the_header(tmp_path):
    path = tmp_path / "nine.wav"
    sf.write(path, np.full((SAMPLE_RATE, 9), 0.1, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioFormatError) as raised:
        load_audio(path)
    assert str(raised.value) == f"{path}: 9 channels is more than the limit of 8; mix the clip down to mono"


@pytest.mark.parametrize(
    "rate, channels, fmt", [(48_000, 8, "FLAC"), (48_000, 2, "WAV"), (MAX_SAMPLE_RATE, 2, "WAV")], ids=str
)
def test_legitimate_multichannel_and_high_rate_clips_load_in_bounded_memory(tmp_path, rate, channels, fmt):
    seconds = 29.0 if rate == 48_000 else 5.0
    tone = tiny.tone(seconds, rate=rate)
    gains = np.linspace(1.0, 0.2, channels, dtype=np.float32)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, tone[:, None] * gains, rate, format=fmt, subtype="PCM_16")
    wave, peak = _peak_mb(lambda: load_audio(path))
    assert isinstance(wave, np.ndarray), wave
    assert abs(wave.size - seconds * SAMPLE_RATE) <= 2
    # mixed to mono: the mean of the channels' gains scales the tone
    assert np.isclose(np.abs(wave).max(), gains.mean() * np.abs(tone).max(), atol=0.02)
    # all channels at float32 at once would be seconds x rate x channels x 4 B (44.5 MB for 8 x 48 kHz)
    assert peak < 0.5 * seconds * rate * 4 * max(channels, 2) / MB + 8, f"{peak:.1f} MB"


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg for the fallback decoder")
def test_formats_libsndfile_cannot_read_are_checked_and_mixed_down_too(tmp_path):
    wav = tmp_path / "stereo.wav"
    sf.write(wav, np.stack([tiny.tone(2.0, rate=44100)] * 2, 1), 44100)
    m4a = tmp_path / "stereo.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(m4a)], check=True)
    with pytest.raises(Exception):  # noqa: B017 (any error: libsndfile must not read it, or this tests nothing)
        sf.info(str(m4a))
    assert abs(load_audio(m4a).size - 2 * SAMPLE_RATE) < 0.05 * SAMPLE_RATE
    long = tmp_path / "long.wav"
    sf.write(long, tiny.tone(40.0, rate=8000), 8000)
    long_m4a = tmp_path / "long.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(long), str(long_m4a)], check=True)
    with pytest.raises(AudioTooLongError, match="40.0 s is longer than the model's 30 s window"):
        load_audio(long_m4a)


# --- typed text -------------------------------------------------------------------------------


class _Recorder:
    """A system that records every call; typed text over the limit must never reach it."""

    name, description, window_seconds = "recorder", "records calls", 30.0

    def __init__(self):
        self.calls = 0

    def stream(self, *args, **kwargs):
        self.calls += 1
        raise AssertionError("the model was called")


def test_a_100000_character_message_is_refused_with_no_model_call():
    recorder = _Recorder()
    cb = callbacks.Callbacks({"recorder": recorder}, NullSynthesizer(), "stub", GREEDY)
    text = "a" * 100_000
    expected = f"Your message is 100,000 characters; the limit is {MAX_TEXT_CHARS:,} — shorten it."
    checks = cb.check_turn(None, text, (), "recorder", 0.5, 0.5, 8, True, 0)
    assert [c["is_valid"] for c in checks] == [True, False] + [True] * 7
    assert checks[1]["message"] == expected  # shown on the text box, before the request is queued
    with pytest.raises(gr.Error) as raised:  # the handler refuses it too (the API without the page)
        list(cb.talk(None, text, (), "recorder", 0.5, 0.5, 8, True, 0))
    assert raised.value.message == expected
    with pytest.raises(gr.Error, match="100,000 characters"):
        cb.voice_typed(text, "sad")
    assert recorder.calls == 0
    ok = cb.check_turn(None, "a" * MAX_TEXT_CHARS, (), "recorder", 0.5, 0.5, 8, True, 0)
    assert all(c["is_valid"] for c in ok)


def test_a_system_refuses_a_long_text_before_its_model_runs(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    system = BlspSystem("blsp-emo", "", model, tok, SYSTEM_EMPATHETIC, True)
    monkeypatch.setattr(system, "_answer", lambda *a: pytest.fail("the model was called"))
    with pytest.raises(TextTooLongError, match="Your message is 100,000 characters; the limit is 2,000"):
        system.respond(text="a" * 100_000, options=GREEDY)


def _long_history(tok, exchanges: int) -> tuple[Turn, ...]:
    """Typed exchanges of about 300 tokens each, every user turn numbered."""
    words = "I got the letter from the office today. That sounds wonderful, tell me more! "
    turns = []
    for i in range(exchanges):
        turns += [Turn("user", f"turn {i}: " + words * 12), Turn("assistant", words * 2)]
    assert len(tok.encode(turns[0].text)) > 150
    return tuple(turns)


@pytest.mark.parametrize("kind", ["blsp", "cascade"])
def test_a_long_history_is_trimmed_oldest_first_and_the_reply_still_comes(model_and_tokenizer, bundle_dir, kind):
    model, tok = model_and_tokenizer
    if kind == "blsp":
        system = BlspSystem("blsp-emo", "", model, tok, SYSTEM_EMPATHETIC, True)
        turn_args = {"audio": tiny.tone(2.0)}
    else:
        system = load_systems(["cascade"], model=str(bundle_dir))[0]["cascade"]
        turn_args = {"text": "and then?"}
    history = _long_history(tok, 12)
    kept = []
    fit = system._fit_prompt
    system._fit_prompt = lambda *a: kept.append(fit(*a)) or kept[-1]  # the instance's own, for this test
    limit = system.context_tokens() - GREEDY.max_new_tokens
    reply = system.respond(history=history, options=GREEDY, **turn_args)
    assert reply.done and isinstance(reply.text, str)
    turns, encoded = kept[0]
    assert 0 < len(turns) < len(history) and turns == history[-len(turns) :]  # the newest, whole exchanges
    assert turns[0].role == "user" and len(encoded.input_ids) <= limit
    # the longest suffix that fits: one more exchange would not
    user = Turn("user", turn_args.get("text", ""), turn_args.get("audio"))
    assert len(_encode_len(system, (*history[-len(turns) - 2 :], user)).input_ids) > limit


def _encode_len(system, turns):
    """The prompt `system` would encode for `turns`, through its own `_answer`'s encoder."""
    from blsp_emo.model.processor import frame_counts, speech_lengths
    from blsp_emo.prompts import chat_pieces

    if isinstance(system, BlspSystem):
        clips = [t.audio for t in turns if t.role == "user" and t.audio is not None]
        config = system.model.config
        return system.tokenizer.encode_pieces(
            chat_pieces(system.system_prompt, turns), speech_lengths(frame_counts(clips, config), config)
        )
    return system.tokenizer.encode_pieces(system.prompt_pieces(tuple(turns)))


def test_the_prompt_window_caps_even_a_long_context_and_a_turn_that_cannot_fit_is_refused(
    model_and_tokenizer, monkeypatch
):
    model, tok = model_and_tokenizer
    system = BlspSystem("blsp", "", model, tok, SYSTEM_PLAIN, False)
    monkeypatch.setattr(systems_base, "MAX_PROMPT_TOKENS", 700)  # below the tiny model's 2,048 positions
    history = _long_history(tok, 6)
    turns, encoded = system._fit_prompt(Turn("user", "hi"), history, GREEDY, lambda t: _encode_len(system, t))
    assert len(encoded.input_ids) <= 700 and 0 < len(turns) < len(history)
    assert system.respond(text="hi", history=history, options=GREEDY).done
    with pytest.raises(PromptTooLongError, match=r"This turn alone is [\d,]+ tokens; the model's prompt limit is 700"):
        system.respond(text="That sounds wonderful, tell me more! " * 50, options=GREEDY)


# --- the page decodes an upload once ----------------------------------------------------------


@pytest.fixture(scope="module")
def systems(bundle_dir):
    systems, notes = load_systems(available_systems(), model=str(bundle_dir))
    assert notes == []
    return systems


@pytest.fixture()
def decodes(monkeypatch):
    calls = []
    real = callbacks.load_audio

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(callbacks, "load_audio", counting)
    return calls


def _demo_callbacks(systems):
    demo = app.build_demo(systems, NullSynthesizer(), options=GREEDY)
    talk = next(fn for fn in demo.fns.values() if fn.api_name == "talk")
    return demo, talk.fn.__self__


def test_the_page_decodes_an_upload_once_per_request(systems, clip_path, tmp_path, decodes):
    demo, cb = _demo_callbacks(systems)
    for event in ("talk", "respond", "compare"):
        clip = tmp_path / f"{event}.wav"
        shutil.copy(clip_path, clip)
        path = str(clip)
        if event == "talk":  # the validator, then the handler, as Gradio runs them
            assert all(c["is_valid"] for c in cb.check_turn(path, "", (), *SETTINGS))
            assert list(cb.talk(path, "", (), *SETTINGS))[-1][cb.ui.chat][-1].reply.done
        elif event == "respond":
            assert all(c["is_valid"] for c in cb.check_respond(path, "blsp-emo"))
            assert cb.respond(path, "blsp-emo")[0]["file"] == clip.name
        else:  # the compare validator checks the clip for every system, then every column answers
            assert cb.audio_problem(path, list(systems)) is None
            for name in systems:
                assert list(cb.answer(name, path, 0, *SETTINGS[1:]))[-1][-1].done
        assert decodes.count(clip.name) == 1, (event, decodes)


def test_over_http_an_upload_is_decoded_once_and_long_text_is_refused(systems, clip_path, tmp_path, decodes):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError

    demo, _ = _demo_callbacks(systems)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False, httpx_kwargs={"timeout": 120})
        clip = tmp_path / "over_http.wav"
        shutil.copy(clip_path, clip)
        result, _ = client.predict(handle_file(str(clip)), "blsp-emo", api_name="/respond")
        assert result["reply"] is not None and decodes.count(clip.name) == 1, decodes
        with pytest.raises(ValidationError, match="Your message is 100,000 characters; the limit is 2,000"):
            client.predict(None, "a" * 100_000, *SETTINGS, api_name="/talk")
        chat = client.predict(None, "still there?", *SETTINGS, api_name="/talk")[0]
        assert len(chat) == 2
    finally:
        demo.close()


def test_the_terminal_chat_refuses_a_long_typed_line_and_takes_the_next(monkeypatch):
    import io

    import blsp_emo.chat as chat

    monkeypatch.setattr(chat, "check_input", lambda: None)  # no PortAudio needed: only typed lines
    lines = iter(["a" * 3000, "hello"])

    def read_line():
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    assert list(chat.microphone_turns(10.0, read_line=read_line, out=out)) == ["hello"]
    assert "error: Your message is 3,000 characters; the limit is 2,000 — shorten it." in out.getvalue()


# --- the server's whole process tree through the bomb and the long text ------------------------

TREE_GROWTH_MB = 300  # the acceptance: the tree grows by at most this over its idle size


class _TreePeak:
    """The resident memory of a process and everything under it (the model workers), sampled every
    20 ms in a thread while the block runs: a bomb decoded whole would be there for seconds."""

    def __init__(self, pid: int):
        from blsp_emo.bench.app_process import process_rss_mb, process_tree

        self.pids, self._rss = process_tree(pid), process_rss_mb
        self.idle = self.now()
        self.peak = self.idle

    def now(self) -> float:
        return sum(self._rss(p) for p in self.pids)

    def __enter__(self):
        import threading

        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


@pytest.mark.server
def test_the_servers_process_tree_stays_bounded_through_the_bomb_and_the_long_text(bundle_dir, bomb, clip_path):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError, ValidationError

    from blsp_emo.bench.app_process import spawn_app

    server = spawn_app(("--model", str(bundle_dir), "--tts", "none", "--systems", "blsp-emo"))
    try:
        client = Client(server.url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})
        assert client.predict(handle_file(str(clip_path)), "blsp-emo", api_name="/respond")[0]["reply"] is not None
        talk = lambda audio, text, seed=0: client.predict(audio, text, *SETTINGS[:-1], seed, api_name="/talk")  # noqa: E731
        attacks = {  # each request, and the line its caller must get
            "bomb to /respond": (lambda: client.predict(handle_file(str(bomb)), api_name="/respond"), "655,350 Hz"),
            "bomb to /talk": (lambda: talk(handle_file(str(bomb)), ""), "655,350 Hz"),
            "100,000 characters": (lambda: talk(None, "a" * 100_000), "Your message is 100,000 characters"),
            "seed 2**70": (lambda: talk(None, "hi", 2**70), f"seed {2**70} is outside 0–9,007,199,254,740,991"),
        }
        tree = _TreePeak(server.process.pid)
        assert len(tree.pids) == 2  # the server and its model worker
        with tree, ThreadPoolExecutor(4) as pool:
            for name, (attack, line) in attacks.items():
                with pytest.raises(ValidationError if name != "seed 2**70" else AppError, match=line):
                    attack()
            bombs = [pool.submit(attacks["bomb to /respond"][0]) for _ in range(4)]  # four at once: 3.9 GB before
            for job in bombs:
                with pytest.raises(ValidationError, match="a sample rate of 655,350 Hz is outside the limit"):
                    job.result(timeout=180)
        print(f"server tree: {tree.idle:.0f} MB idle, {tree.peak:.0f} MB at the peak of the attacks")
        assert tree.peak - tree.idle <= TREE_GROWTH_MB, f"{tree.idle:.0f} MB idle -> {tree.peak:.0f} MB peak"
        assert len(talk(None, "still there?")[0]) == 2 and server.process.poll() is None
    finally:
        server.stop()
