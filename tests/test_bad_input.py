"""The bad-input suite of issue 8, for the CLI and for a real `python app.py` process.

Each input gets one clear line naming it and saying what to do; the good input beside it is still
answered; the server keeps serving and its memory stays bounded through a 500 MB upload.
"""

import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

import tiny
from blsp_emo.bench.app_process import process_rss_mb, spawn_app

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000
pytestmark = pytest.mark.server  # the CLI and the app, each in a subprocess


def _wav_header(n_bytes: int, rate: int = RATE) -> bytes:
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + n_bytes, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16, b"data", n_bytes
    )


def _two_hours_flac(path: Path) -> None:
    """2 h of digital silence in 180 kB: small enough to upload, refused from its header."""
    with sf.SoundFile(path, "w", 8000, 1, format="FLAC", subtype="PCM_16") as f:
        minute = np.zeros(8000 * 60, np.int16)
        for _ in range(120):
            f.write(minute)


def _sparse(path: Path, size: int, head: bytes = b"") -> None:
    """A file of `size` bytes that takes no disk space (a hole after `head`)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def _truncated(path: Path) -> None:
    good = path.with_suffix(".full.wav")
    sf.write(good, tiny.tone(1.0), RATE)
    path.write_bytes(good.read_bytes()[:30])  # cut inside the 44-byte header
    good.unlink()


# name -> (make the file, what the one-line message must say; None = a valid clip that is answered)
BAD = {
    "empty.wav": (lambda p: p.write_bytes(b""), "the file is empty"),
    "zero_samples.wav": (lambda p: sf.write(p, np.zeros(0, np.float32), RATE), "has no samples"),
    "all_zero.wav": (lambda p: sf.write(p, np.zeros(2 * RATE, np.float32), RATE), "the audio is silent"),
    "nan.wav": (
        lambda p: sf.write(p, np.full(2 * RATE, np.nan, np.float32), RATE, subtype="FLOAT"),
        "NaN or infinite samples",
    ),
    "two_hours.flac": (_two_hours_flac, "7200.0 s is longer than the model's 10 s window"),
    "stereo_8k.wav": (lambda p: sf.write(p, np.stack([tiny.tone(2.0, rate=8000)] * 2, 1), 8000), None),
    "picture.wav": (
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(300)),
        "not a readable audio file",
    ),
    "random.wav": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(8192)), "not a readable audio file"),
    "truncated_header.wav": (_truncated, "not a readable audio file"),
}
BIG = 500 * 2**20


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    for name, (make, _) in BAD.items():
        make(folder / name)
    return folder


def _respond(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "blsp_emo", "respond", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
    )


def test_cli_gives_each_bad_file_one_line_and_answers_the_rest(model_dir, bad_files, clip_path, tmp_path):
    big_wav, big_other = tmp_path / "big_500mb.wav", tmp_path / "big_500mb.mp3"
    _sparse(big_wav, BIG, _wav_header(BIG - 44))  # a header for 4.6 h of samples that were never written
    _sparse(big_other, BIG)
    expected = {
        **{n: m for n, (_, m) in BAD.items()},
        big_wav.name: "longer than the model's 10 s window",
        big_other.name: "500 MB in a format libsndfile cannot read",
    }
    files = [bad_files / n for n in BAD] + [big_wav, big_other, clip_path]
    start = time.monotonic()
    out = _respond(*files, "--model", model_dir, "--json", "--greedy", "--max-new-tokens", "2")
    elapsed = time.monotonic() - start
    big_wav.unlink()
    big_other.unlink()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    errors = {line.split(": ", 2)[1]: line for line in out.stderr.strip().splitlines()}
    answered = [json.loads(line)["file"] for line in out.stdout.splitlines()]
    for name, message in expected.items():
        path = str(files[[f.name for f in files].index(name)])
        if message is None:
            assert path in answered, f"{name} was not answered: {out.stderr}"
        else:
            assert message in errors[path], (name, errors.get(path))
            assert errors[path].startswith(f"error: {path}: ") and "\n" not in errors[path]
    assert str(clip_path) in answered
    assert elapsed < 120  # the 500 MB files are judged from their size and header, never read


@pytest.fixture(scope="module")
def server(bundle_dir):
    app = spawn_app(("--model", str(bundle_dir), "--tts", "none", "--systems", "blsp-emo,cascade"))
    yield app
    app.stop()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})


def test_app_gives_each_bad_file_a_clear_message_and_keeps_serving(server, bad_files, clip_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import ValidationError

    client = _client(server.url)
    for name, (_, message) in BAD.items():
        if message is None:
            result, _ = client.predict(handle_file(str(bad_files / name)), api_name="/respond")
            assert result["file"] == name and result["reply"] is not None
            continue
        with pytest.raises(ValidationError) as raised:
            client.predict(handle_file(str(bad_files / name)), api_name="/respond")
        assert message in str(raised.value) and name in str(raised.value), (name, str(raised.value))
        assert server.process.poll() is None
    result, _ = client.predict(handle_file(str(clip_path)), "cascade", api_name="/respond")
    assert result["system"] == "cascade" and isinstance(result["transcript"], str)


def test_a_bad_turn_loses_nothing_of_the_conversation(server, bad_files, clip_path):
    from gradio_client import handle_file

    client = _client(server.url)
    talk = lambda audio, text="": client.submit(audio, text, None, 0.5, 0.5, 8, True, 0, api_name="/talk")  # noqa: E731
    first = talk(handle_file(str(clip_path))).result()[0]
    with pytest.raises(Exception, match="not a readable audio file"):
        talk(handle_file(str(bad_files / "picture.wav"))).result()
    chat = talk(None, "still there?").result()[0]
    assert len(first) == 2 and len(chat) == 4 and chat[:1] == first[:1]


def test_a_500_mb_upload_is_refused_with_bounded_server_memory(server, tmp_path):
    big = tmp_path / "huge.wav"
    _sparse(big, BIG, _wav_header(BIG - 44))
    pid = server.process.pid
    before, peak, done = process_rss_mb(pid), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process_rss_mb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(big, "rb") as f:  # streamed from disk by httpx, as a browser would send it
            response = httpx.post(
                f"{server.url}gradio_api/upload", files={"files": (big.name, f, "audio/wav")}, timeout=120
            )
        status, text = response.status_code, response.text
    except httpx.TransportError as e:  # the server may hang up once it has refused
        status, text = None, str(e)
    finally:
        done.set()
        sampler.join()
        big.unlink()
    print(f"500 MB upload: HTTP {status}; server RSS {before:.0f} MB before, peak {peak[0]:.0f} MB during")
    assert status in (413, None), (status, text)
    if status == 413:
        assert "at most 24 MB" in text  # the total-size bound answers before Gradio reads the body
    assert peak[0] - before < 100, f"server RSS {before:.0f} MB -> peak {peak[0]:.0f} MB during a 500 MB upload"
    assert httpx.get(server.url, timeout=30).status_code == 200 and server.process.poll() is None


def test_the_client_is_told_the_limit_before_uploading(server, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "huge.wav"
    _sparse(big, BIG, _wav_header(BIG - 44))
    try:
        with pytest.raises(ValueError, match="exceeds the maximum file size"):
            _client(server.url).predict(handle_file(str(big)), api_name="/respond")
    finally:
        big.unlink()
