"""What the page keeps on disk, and for how long: a visitor's audio lasts only as long as their session.

Gradio keeps every upload, and every audio output it is handed as a waveform, in its cache folder
(`GRADIO_TEMP_DIR`, else `<tmp>/gradio`), under a name made from the file's content, and serves it
by URL until the server stops. Here:

* each spoken reply is its own file (`SessionFiles.write_wav`): a new name per reply, written under
  a temporary name and renamed into place, never rewritten. (Gradio writes a waveform output to a
  name made from its samples, in place: two identical replies at once rewrote the file one of them
  was downloading.)
* the uploads a session's events used, and its replies, are deleted when the session ends
  (`demo.unload`; the page's heartbeat closes when its tab does), unless another live session
  used the same upload since;
* what no session claimed (an upload never sent with an event) goes after `DELETE_AFTER_S`
  (Gradio's `delete_cache`), and everything this app made when it stops;
* at launch, entries of the cache folder older than this process (left by an earlier run) go
  (the folder is `<tmp>/blsp-emo-gradio` unless `GRADIO_TEMP_DIR` is set);
* an upload request is refused whole above `MAX_UPLOAD_REQUEST` bytes (Gradio's `max_file_size`
  bounds each file, not the request: 10 files of 15 MB were one accepted POST).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile as sf
from gradio.context import LocalContext
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

MAX_FILE = "20mb"  # one upload: a clip of at most 30 s needs far less, even as 8-channel 192 kHz float WAV
MAX_UPLOAD_REQUEST = 24 * 1024 * 1024  # one /upload request in all: one largest file and the form around it
SWEEP_EVERY_S, DELETE_AFTER_S = 600, 3600  # Gradio's delete_cache: unclaimed files go within 70 minutes
REPLIES = "replies"  # <cache>/replies/<session key>/<random>.wav
STARTED = time.time()  # entries of the cache folder older than this were left by an earlier run
# A folder of the app's own, unless GRADIO_TEMP_DIR names one: the sweep at launch then never touches
# another Gradio app's files (Gradio reads the variable each time it makes a page or a server).
os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tempfile.gettempdir()) / "blsp-emo-gradio"))


def cache_dir() -> Path:
    return Path(get_upload_folder()).resolve()


def _session() -> str | None:
    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) if request is not None else None


def _key(session: str) -> str:
    """The folder name for a session: its hash is chosen by the client, so never a path itself."""
    return hashlib.sha256(session.encode()).hexdigest()[:32]


class SessionFiles:
    """The files each live session made (replies) or used (uploads), deleted when it ends."""

    def __init__(self):
        self._lock = threading.Lock()
        self._uploads: dict[str, dict[str, tuple[int, int]]] = {}  # session -> path -> (inode, ctime)
        self.demos: list[gr.Blocks] = []  # the files their examples keep are never deleted

    def write_wav(self, sample_rate: int, samples: np.ndarray) -> str:
        """`samples` as a new WAV file of its own in the cache folder, under the calling session's folder."""
        session = _session()
        folder = cache_dir() / REPLIES / (_key(session) if session else "no-session")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{secrets.token_hex(12)}.wav"
        fd, staging = tempfile.mkstemp(dir=folder, prefix=".reply-", suffix=".part")
        os.close(fd)
        try:
            sf.write(staging, samples, sample_rate, format="WAV", subtype="PCM_16")
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return str(path)

    def claim(self, path: str | None) -> None:
        """The calling session used the upload at `path` (outside the cache folder: nothing to do)."""
        session = _session()
        if not (session and path) or not _in_cache(path):
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        with self._lock:
            self._uploads.setdefault(session, {})[os.path.abspath(path)] = (st.st_ino, st.st_ctime_ns)

    def end_session(self) -> None:
        """The page's unload event: delete what the session uploaded and the replies made for it."""
        session = _session()
        if not session:
            return
        with self._lock:
            mine = self._uploads.pop(session, {})
            others = {p for files in self._uploads.values() for p in files}
        kept = {str(p) for demo in self.demos for block in demo.blocks.values() for p in block.keep_in_cache}
        for path, (inode, ctime) in mine.items():
            if path in others or path in kept:
                continue
            try:  # the same content uploaded again since (by anyone) replaced the file: it is theirs now
                st = os.stat(path)
                if (st.st_ino, st.st_ctime_ns) == (inode, ctime):
                    os.remove(path)
                    _remove_empty(Path(path).parent)
            except OSError:
                continue
        shutil.rmtree(cache_dir() / REPLIES / _key(session), ignore_errors=True)

    def install(self, demo: gr.Blocks) -> None:
        install(demo, self)


def spoken_reply(**kwargs) -> gr.Audio:
    """A `gr.Audio` output that takes a reply written by `SessionFiles.write_wav` as it is.

    Gradio's `Audio` probes every file it is handed with ffprobe (about 90 ms, on the server's event
    loop) to see whether a browser can play it; a reply file is always 16-bit PCM WAV. (Not a
    subclass: Gradio writes a `.pyi` file beside the module of every component class defined.)
    """
    audio = gr.Audio(**kwargs)
    probed = audio.postprocess

    def postprocess(value):
        if isinstance(value, str) and value.endswith(".wav") and _in_cache(value, REPLIES):
            return FileData(path=value, orig_name=Path(value).name)
        return probed(value)

    audio.postprocess = postprocess
    return audio


def _in_cache(path: str, under: str = "") -> bool:
    try:
        return Path(path).resolve().is_relative_to(cache_dir() / under)
    except (OSError, ValueError):
        return False


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


FILES = SessionFiles()  # the app's one registry: the Talk, Compare, API and Rate tabs claim into it


def sweep(before: float = STARTED, folder: Path | None = None) -> int:
    """Delete the entries of the cache folder last changed before `before` (an earlier run's); how many."""
    folder = folder or cache_dir()
    removed = 0
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        try:
            if entry.lstat().st_mtime >= before:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            continue
    return removed


class UploadLimit:
    """ASGI middleware: an `/upload` request is refused whole above `limit` bytes, or without a length."""

    def __init__(self, app, limit: int = MAX_UPLOAD_REQUEST):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/upload"):
            length = dict(scope["headers"]).get(b"content-length")
            problem = None
            if length is None or not length.isdigit():
                problem = (411, "An upload needs a Content-Length.")
            elif int(length) > self.limit:
                problem = (413, f"An upload request may be at most {self.limit // 2**20} MB in all.")
            if problem:
                await PlainTextResponse(problem[1], status_code=problem[0])(scope, receive, send)
                return
            receive = _capped(receive, int(length))
        await self.app(scope, receive, send)


def _capped(receive, length: int):
    """`receive`, ending the body once `length` bytes came (a body longer than its header says is cut)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > length:
                return {"type": "http.disconnect"}
        return message

    return wrapped


def install(demo: gr.Blocks, files: SessionFiles) -> None:
    """Bound what `demo` keeps: per-session deletion, age-based deletion, the sweep and the request limit.

    Call inside `demo`'s `with gr.Blocks()` block. The sweep and the middleware come with
    `demo.launch`, whichever way it is called.
    """
    files.demos.append(demo)
    demo.unload(files.end_session)
    demo.delete_cache = (SWEEP_EVERY_S, DELETE_AFTER_S)
    launch = demo.launch

    def launch_bounded(*args, app_kwargs: dict | None = None, **kwargs):
        sweep()
        app_kwargs = dict(app_kwargs or {})
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", ()), Middleware(UploadLimit)]
        kwargs.setdefault("max_file_size", MAX_FILE)
        return launch(*args, app_kwargs=app_kwargs, **kwargs)

    demo.launch = launch_bounded
