"""What the page keeps on disk (webui/storage.py): each reply its own file, a session's audio gone when
the session ends, an earlier run's files swept at launch, and an upload request bounded in all."""

from __future__ import annotations

import io
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

gr = pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")

import app  # noqa: E402
import tiny  # noqa: E402
from blsp_emo import GenerationOptions, available_systems  # noqa: E402
from blsp_emo.systems import load_systems  # noqa: E402
from webui import storage  # noqa: E402

GREEDY = GenerationOptions(max_new_tokens=8, greedy=True, seed=0)
VOICE_SAMPLES = 16000  # 1 s of the stand-in voice at 16 kHz


class ToneSynthesizer:
    """Always the same second of tone: every reply's audio is identical, as the race needs."""

    name = "tone"

    def synthesize(self, text, style=None):
        return 16000, (0.3 * np.sin(np.arange(VOICE_SAMPLES) * 2 * np.pi * 440 / 16000)).astype(np.float32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Gradio's cache folder for this module's server, with a file an earlier run left in it."""
    folder = tmp_path_factory.mktemp("gradio-cache")
    stale = folder / ("0" * 64)
    stale.mkdir()
    (stale / "left-by-an-earlier-run.wav").write_bytes(b"RIFF")
    old = storage.STARTED - 3600
    os.utime(stale / "left-by-an-earlier-run.wav", (old, old))
    os.utime(stale, (old, old))
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = before


@pytest.fixture(scope="module")
def served(cache, bundle_dir):
    systems, notes = load_systems(available_systems(), model=str(bundle_dir))
    assert notes == []
    demo = app.build_demo(systems, ToneSynthesizer(), options=GREEDY, concurrency=2, max_queue=64)
    app.launch(demo, "127.0.0.1", _free_port(), prevent_thread_lock=True, quiet=True)
    yield demo
    demo.close()


@pytest.mark.server
def test_files_an_earlier_run_left_are_swept_at_launch(served, cache):
    assert not (cache / ("0" * 64)).exists()


@pytest.mark.server
def test_thirty_identical_replies_at_once_each_get_a_complete_wav_of_their_own(served, clip_path, monkeypatch):
    from gradio import processing_utils
    from gradio_client import Client, handle_file

    probes = []  # a reply file is served as it is, never probed with ffprobe (90 ms on the event loop)
    monkeypatch.setattr(processing_utils, "audio_is_playable", lambda path: probes.append(path) or True)

    client = Client(served.local_url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})
    try:

        def one(_):
            result, speech = client.predict(handle_file(str(clip_path)), "blsp-emo", api_name="/respond")
            wav = httpx.get(speech.url if hasattr(speech, "url") else speech["url"], timeout=60)
            wav.raise_for_status()
            return result["reply"], (speech.path if hasattr(speech, "path") else speech["path"]), wav.content

        with ThreadPoolExecutor(30) as pool:  # before the fix: 6 of 30 downloads cut short
            outcomes = list(pool.map(one, range(30), timeout=240))
    finally:
        client.close()
    assert len({reply for reply, _, _ in outcomes}) == 1  # identical replies, so identical audio
    assert len({path for _, path, _ in outcomes}) == 30  # ...each in a file of its own
    assert probes == []
    for _, _, body in outcomes:
        samples, rate = sf.read(io.BytesIO(body), dtype="int16")
        assert rate == 16000 and len(samples) == VOICE_SAMPLES


@pytest.mark.server
def test_a_sessions_upload_and_reply_are_deleted_when_it_ends(served, clip_path, tmp_path, cache):
    from gradio_client import Client, handle_file

    mine = tmp_path / "only-this-session.wav"
    wave, _ = sf.read(clip_path, dtype="float32")
    sf.write(mine, wave * 0.5, 16000)  # content no other test uploads
    client = Client(served.local_url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})
    _, speech = client.predict(handle_file(str(mine)), "blsp-emo", api_name="/respond")
    speech = speech if isinstance(speech, dict) else speech.model_dump()
    uploads = list(cache.rglob(mine.name))
    assert len(uploads) == 1 and Path(speech["path"]).exists()
    assert httpx.get(speech["url"], timeout=30).status_code == 200
    assert httpx.get(speech["url"].split("/gradio_api/file=")[0] + f"/gradio_api/file={uploads[0]}").status_code == 200
    client.close()  # the heartbeat ends: Gradio runs the page's unload event for the session
    assert _wait(lambda: not uploads[0].exists() and not Path(speech["path"]).exists())
    upload_url = speech["url"].split("/gradio_api/file=")[0] + f"/gradio_api/file={uploads[0]}"
    for url in (speech["url"], upload_url):  # Gradio answers 403 for a file it does not have
        assert httpx.get(url, timeout=30).status_code in (403, 404), url


@pytest.mark.server
def test_an_upload_request_over_the_total_is_refused_whole(served, cache):
    url = served.local_url.rstrip("/") + "/gradio_api/upload"
    before = {p for p in cache.rglob("*") if p.is_file()}
    part = b"\0" * (15 * 2**20)  # each under the 20 MB per file; 30 MB together
    files = [("files", (f"big{i}.wav", part, "audio/wav")) for i in range(2)]
    refused = httpx.post(url, files=files, timeout=60)
    assert refused.status_code == 413, refused.text
    assert {p for p in cache.rglob("*") if p.is_file()} == before  # nothing of it kept
    small = httpx.post(url, files=[("files", ("small.wav", b"RIFF" + b"\0" * 100, "audio/wav"))], timeout=60)
    assert small.status_code == 200 and Path(small.json()[0]).exists()


def test_a_reply_is_written_whole_under_a_new_name_each_time(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    files = storage.SessionFiles()
    tone = tiny.tone(0.5).astype(np.float32)
    pcm = (tone * 32767).astype(np.int16)
    a, b = files.write_wav(16000, pcm), files.write_wav(16000, pcm)
    assert a != b and Path(a).read_bytes() == Path(b).read_bytes()
    assert not list(tmp_path.rglob("*.part"))  # the staging name is gone once renamed


def test_the_sweep_keeps_what_this_run_made(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    os.utime(old, (storage.STARTED - 10, storage.STARTED - 10))
    assert storage.sweep(folder=tmp_path) == 1
    assert not old.exists() and new.exists()
    shutil.rmtree(new)


def test_an_upload_another_live_session_used_is_kept_until_that_one_ends(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from gradio.context import LocalContext

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    files = storage.SessionFiles()
    shared = tmp_path / ("a" * 64) / "clip.wav"
    shared.parent.mkdir()
    shared.write_bytes(b"RIFF")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.wav"  # not in the cache: never deleted
    outside.write_bytes(b"RIFF")

    def as_session(name, action):
        token = LocalContext.request.set(SimpleNamespace(session_hash=name))
        try:
            return action()
        finally:
            LocalContext.request.reset(token)

    for session in ("one", "two"):
        as_session(session, lambda: (files.claim(str(shared)), files.claim(str(outside))))
    reply = Path(as_session("one", lambda: files.write_wav(16000, np.zeros(160, np.int16))))
    as_session("one", files.end_session)
    assert shared.exists() and outside.exists() and not reply.exists()  # "two" still uses the clip
    as_session("two", files.end_session)
    assert not shared.exists() and not shared.parent.exists() and outside.exists()
    outside.unlink()
