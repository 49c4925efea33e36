"""The degraded points of the hostile review (docs/robustness.md): each failure a visitor or whoever
runs the app can meet is one line that names what happened and what to do, never a traceback or
Gradio's generic error.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blsp_emo import GenerationOptions
from blsp_emo.model.weights import CorruptWeightsError, check_weights
from blsp_emo.serving.pool import WorkerPool
from blsp_emo.serving.protocol import WorkerError, WorkerSpec
from blsp_emo.systems import load_systems
from blsp_emo.tts import NullSynthesizer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
FIX = "copy or download the model folder again (or re-run the build that wrote it)"


def _run(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout
    )


def _damaged_copy(model_dir: Path, folder: Path, how: str) -> Path:
    """`model_dir` copied to `folder` with its weight file damaged `how`."""
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    damaged = {
        "header cut": data[:3000],  # a download stopped early
        "tensors cut": data[:-1000],
        "zeros": bytes(len(data)),  # a disk that lost the blocks
        "empty": b"",
    }[how]
    weights.write_bytes(damaged)
    return weights


@pytest.mark.parametrize("how", ["header cut", "tensors cut", "zeros", "empty"])
def test_a_damaged_weight_file_is_named_with_the_fix(model_dir, tmp_path, how):
    weights = _damaged_copy(model_dir, tmp_path / "model", how)
    with pytest.raises(CorruptWeightsError) as raised:
        check_weights(weights.parent)
    message = str(raised.value)
    assert message.startswith(f"{weights}: the weight file is damaged (") and message.endswith(FIX)
    assert "\n" not in message
    # raised, not turned into a note on a page that then serves without the model
    with pytest.raises(CorruptWeightsError, match="the weight file is damaged"):
        load_systems(["blsp-emo"], model=str(weights.parent))


def test_a_sharded_folder_names_the_damaged_shard_even_outside_it(model_dir, tmp_path):
    folder = tmp_path / "bundle" / "blsp-emo"
    shutil.copytree(model_dir, folder)
    shared = tmp_path / "bundle" / "shared.safetensors"  # the bundle's shards sit beside its folders
    (folder / "model.safetensors").rename(shared)
    index = {"metadata": {}, "weight_map": {"adapter.fc1.weight": "../shared.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    check_weights(folder)  # intact: nothing to say
    shared.write_bytes(shared.read_bytes()[:-10])
    with pytest.raises(CorruptWeightsError, match=r"shared\.safetensors: the weight file is damaged"):
        check_weights(folder)
    shared.unlink()
    with pytest.raises(CorruptWeightsError, match="missing, though the folder's index names it"):
        check_weights(folder)


def test_the_bundled_models_name_their_rebuild():
    from blsp_emo.model import weights

    assert "python -m train demo" in weights._damaged(weights.BUNDLED_MODELS / "blsp" / "own.safetensors", "why")


def _one_error_line(out: subprocess.CompletedProcess, *expected: str) -> str:
    """The single `error:` line of a run that failed, holding each of `expected`."""
    assert out.returncode != 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert all(part in errors[0] for part in expected), errors[0]
    return errors[0]


@pytest.mark.server
def test_the_cli_and_the_app_name_a_damaged_weight_file_and_exit(model_dir, clip_path, tmp_path):
    weights = _damaged_copy(model_dir, tmp_path / "model", "header cut")
    cli = _run("-m", "blsp_emo", "respond", clip_path, "--model", weights.parent)
    _one_error_line(cli, str(weights), FIX)
    port = _free_port()  # free: the run fails on the weights, not the port
    for workers in ("1", "0"):  # the models load in a worker process, or in the app's own
        app = _run("app.py", "--model", weights.parent, "--tts", "none", "--port", port, "--workers", workers)
        _one_error_line(app, str(weights), FIX)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.server
def test_an_occupied_port_is_named_before_any_model_loads(model_dir, tmp_path):
    # A damaged model folder: were the models loaded first, the error would name the weight file.
    weights = _damaged_copy(model_dir, tmp_path / "model", "header cut")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        asked = {
            "--port": ("--port", port),
            "$GRADIO_SERVER_PORT": (),  # Gradio's own variable; GRADIO_NUM_PORTS=1 leaves it no other port
        }
        for how, port_args in asked.items():
            env = {**ENV, "GRADIO_SERVER_PORT": str(port), "GRADIO_NUM_PORTS": "1"} if not port_args else None
            start = time.monotonic()
            out = _run("app.py", "--host", "127.0.0.1", *port_args, "--model", weights.parent, env=env)
            line = _one_error_line(out, f"port {port} on 127.0.0.1 is in use", "--port N", "GRADIO_SERVER_PORT=N")
            assert str(weights) not in line, how
            assert time.monotonic() - start < 120, how  # seconds, not a model load (generous: a busy machine)


@pytest.mark.server
def test_a_port_out_of_range_is_refused_at_once():
    out = _run("app.py", "--port", "70000", timeout=120)
    _one_error_line(out, "--port 70000 is not a port number; choose one in 1–65535")


# --- a model worker killed mid-request ---------------------------------------------------------

ENDLESS = GenerationOptions(max_new_tokens=1500, min_new_tokens=1500, greedy=True)  # still decoding when killed
SETTINGS = ("blsp-emo", 0.5, 0.5, 8, True, 0)  # system, temperature, top-p, max tokens, greedy, seed


def _page_callbacks(systems):
    import app

    demo = app.build_demo(systems, NullSynthesizer(), options=GenerationOptions(max_new_tokens=8, greedy=True))
    return next(fn.fn.__self__ for fn in demo.fns.values() if fn.api_name == "talk")


@pytest.mark.server
def test_a_worker_killed_mid_reply_is_one_line_to_the_visitor_and_the_next_turn_is_answered(bundle_dir):
    gr = pytest.importorskip("gradio")
    from webui.callbacks import Exchange

    pool = WorkerPool.start(WorkerSpec(("blsp-emo",), model=str(bundle_dir), threads=1, slots=1), workers=1)
    try:
        cb = _page_callbacks(pool.systems)
        turn = cb._turn(pool.systems["blsp-emo"], (), Exchange("hello", None, "hello", None), ENDLESS, None)
        assert len(next(turn)[cb.ui.chatbot]) == 2  # the reply is streaming
        victim = pool._workers[0].process
        victim.kill()
        victim.wait()
        updates = []
        with pytest.raises(gr.Error) as raised:
            for update in turn:
                updates.append(update)
        assert raised.value.title == "The model stopped" and raised.value.message == (
            f"The model stopped while answering: model worker 0 (pid {victim.pid}) exited with code -9 during "
            "the reply; a new one is starting in its place — send your turn again."
        )
        assert updates[-1][cb.ui.chat] == () and updates[-1][cb.ui.chatbot] == []  # the cut turn is taken back
        chat = list(cb.talk(None, "are you back?", (), *SETTINGS))[-1][cb.ui.chat]  # waits for the new worker
        assert chat[-1].reply.done and pool.pids[0] != victim.pid
    finally:
        pool.close()


class _Stopped:
    """A system whose worker ends as it answers."""

    name, description, window_seconds, emotion_source = "blsp-emo", "stops", 30.0, None

    def stream(self, *args, **kwargs):
        raise WorkerError("The model stopped while answering: model worker 0 (pid 1) exited with code -9 …")
        yield

    def respond(self, *args, **kwargs):
        return list(self.stream())[-1]


def test_every_model_call_of_the_page_says_a_stopped_worker_in_one_line(clip_path):
    gr = pytest.importorskip("gradio")
    cb = _page_callbacks({"blsp-emo": _Stopped()})
    calls = {
        "talk": lambda: list(cb.talk(None, "hi", (), *SETTINGS)),
        "compare": lambda: list(cb.answer("blsp-emo", str(clip_path), 0, *SETTINGS[1:])),
        "respond": lambda: cb.respond(str(clip_path), "blsp-emo"),
    }
    for name, call in calls.items():
        with pytest.raises(gr.Error, match="The model stopped while answering: model worker 0") as raised:
            call()
        assert raised.value.title == "The model stopped", name


# --- a seed outside the range ------------------------------------------------------------------


def test_a_seed_outside_the_range_is_one_line_naming_it_and_the_range(clip_path, capsys):
    gr = pytest.importorskip("gradio")
    from blsp_emo.__main__ import main
    from blsp_emo.options import MAX_SEED

    cb = _page_callbacks({"blsp-emo": _Stopped()})  # refused before any model call
    for seed in (2**70, -1, MAX_SEED + 1):
        expected = f"seed {seed} is outside 0–9,007,199,254,740,991; choose one in that range, or none for a new one"
        with pytest.raises(gr.Error) as refused:
            list(cb.talk(None, "hi", (), "blsp-emo", 0.5, 0.5, 8, True, seed))
        assert refused.value.message.startswith(expected)
        with pytest.raises(gr.Error, match=f"seed {seed} is outside"):  # Compare fixes its columns' seed
            cb.start_compare(str(clip_path), seed)
        assert main(["respond", str(clip_path), "--seed", str(seed)]) == 2  # refused before loading a model
        assert capsys.readouterr().err.startswith(f"error: {expected}")
    assert GenerationOptions(seed=MAX_SEED).resolved_seed() == MAX_SEED
