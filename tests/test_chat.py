"""`python -m blsp_emo chat`: a multi-turn conversation from files, and clear failure without a microphone."""

import io
import os
import subprocess
import sys

import pytest

import tiny
from blsp_emo.chat import converse, microphone_turns
from blsp_emo.decoding.generation import GenerationOptions
from blsp_emo.microphone import MicrophoneError, check_input
from blsp_emo.systems import load_system

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_converse_keeps_a_multi_turn_history(bundle_dir):
    system = load_system("cascade-ser", model=bundle_dir)
    spoken = []
    out = io.StringIO()
    history = converse(
        system,
        [tiny.tone(1.5), "and what now?"],
        GenerationOptions(greedy=True, max_new_tokens=4),
        lambda text, emotion: spoken.append((text, emotion)),
        out,
    )
    assert [t.role for t in history] == ["user", "assistant", "user", "assistant"]
    assert history[0].audio is not None and history[0].emotion is not None and history[2].text == "and what now?"
    assert [text for text, _ in spoken] == [history[1].text, history[3].text]
    assert "[emotion: " in out.getvalue() and "[heard: " in out.getvalue()


def test_no_input_device_is_one_clear_line():
    # This machine has PortAudio but no sound card; CI machines have neither or the same.
    with pytest.raises(MicrophoneError, match="use --file CLIP.wav"):
        check_input()


def test_missing_portaudio_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as without libportaudio2
    with pytest.raises(MicrophoneError, match="PortAudio library is not installed.*libportaudio2"):
        next(microphone_turns(10.0, read_line=lambda: ""))


@pytest.mark.server
def test_chat_cli_without_microphone_exits_nonzero(model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "blsp_emo", "chat", "--model", str(model_dir), "--tts", "none"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        input="",
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--file" in lines[0]


@pytest.mark.server
def test_chat_cli_with_files_saves_spoken_replies(model_dir, clip_path, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "blsp_emo",
            "chat",
            "--model",
            str(model_dir),
            "--file",
            str(clip_path),
            str(clip_path),
            "--greedy",
            "--max-new-tokens",
            "6",
            "--save",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("[emotion: ") == 2
    saved = sorted(tmp_path.glob("reply_*.wav"))
    assert (
        len(saved) == 2 == out.stdout.count("(no speaker: reply audio saved")
    )  # the tiny model's replies are non-empty
    assert all(p.stat().st_size > 44 for p in saved)
