"""Model worker processes: the systems run in processes of their own, and a server answers through them.

At demo scale a turn is mostly Python work: the decode loop in the model, and Gradio's queue,
postprocessing and streaming in the app. In one process all of it takes turns on one GIL, so two
visitors whose turns overlap wait for each other (docs/serving.md). `WorkerPool.start` launches
`python -m blsp_emo.serving.workers` processes that each load the systems; the pool offers one
`RemoteSystem` per system, with the interface of every other system, whose calls run in a worker
beside the app's own work instead of between it.

Each worker opens `slots` connections back to the pool (a Unix socket, authenticated with a key
the worker reads from its stdin, so no other process can talk to it). A call holds one connection
for its whole reply, so messages never interleave. A call goes to the worker with the fewest calls
running, ties to the conversation's home worker (picked from its first turn), whose prefix cache
holds the conversation's earlier turns.

The worker process itself is `blsp_emo.serving.workers`; what both sides share (the spec, the
messages) is `blsp_emo.serving.protocol`.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path

import numpy as np

from blsp_emo.audio import AudioSource
from blsp_emo.options import GenerationOptions
from blsp_emo.prompts import Turn
from blsp_emo.serving.protocol import TERMINAL, SystemInfo, WorkerError, WorkerSpec
from blsp_emo.systems.base import Reply, SpokenDialogueSystem


class RemoteSystem(SpokenDialogueSystem):
    """A system loaded in the pool's workers; each call runs in one of them."""

    def __init__(self, info: SystemInfo, pool: WorkerPool):
        self.name, self.description = info.name, info.description
        self.window_seconds, self.emotion_source = info.window_seconds, info.emotion_source
        self._revision, self._pool = info.revision, pool

    def revision(self) -> str:
        return self._revision

    def stream(
        self,
        audio: AudioSource | None = None,
        history: Sequence[Turn] = (),
        options: GenerationOptions = GenerationOptions(),
        text: str | None = None,
    ) -> Iterator[Reply]:
        return self._pool.stream(self.name, audio, tuple(history), options, text)


@dataclass(eq=False)
class _Worker:
    index: int
    process: subprocess.Popen
    connections: list[Connection] = field(default_factory=list)
    free: list[Connection] = field(default_factory=list)
    alive: bool = True

    @property
    def busy(self) -> int:
        """Calls running: the connections not free (a broken one is never given back; its worker is out)."""
        return len(self.connections) - len(self.free)

    def end(self, timeout: float = 0.0) -> None:
        """Close its idle connections (it exits when all have closed), wait up to `timeout` s, then kill it."""
        for conn in list(self.free):
            conn.close()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stopped(self) -> str:
        code = self.process.poll()
        return f"model worker {self.index} (pid {self.process.pid}) " + (
            "stopped" if code is None else f"exited with code {code}"
        )


class _Door:
    """The socket the workers connect back to, open while the pool lives (replacements use it too)."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.folder = tempfile.mkdtemp(prefix="blsp-emo-workers-")
        self.key = secrets.token_bytes(32)
        self.listener = Listener(os.path.join(self.folder, "socket"), family="AF_UNIX", authkey=self.key)
        self.closed = False
        self._accepted: queue.Queue = queue.Queue()
        self._admitting = threading.Lock()  # one admission at a time: each takes the connections it waits for
        threading.Thread(target=self._accept, name="worker-door", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self._accepted.put(self.listener.accept())
            except AuthenticationError:  # not one of ours
                continue
            except OSError:  # closed with the pool
                return

    def launch(self, index: int) -> subprocess.Popen:
        return _launch(
            {"address": self.listener.address, "key": self.key.hex(), "index": index, "spec": asdict(self.spec)}
        )

    def admit(self, procs: dict[int, subprocess.Popen], deadline: float) -> tuple[list[_Worker], tuple, tuple]:
        """Wait for `slots` connections from each process (by worker index); kill them all if one fails."""
        workers = {proc.pid: _Worker(index, proc) for index, proc in procs.items()}
        infos, notes = (), ()
        with self._admitting:
            try:
                while any(len(w.connections) < self.spec.slots for w in workers.values()):
                    try:
                        conn = self._accepted.get(timeout=0.1)
                    except queue.Empty:
                        _check_loading(workers.values(), deadline, self.closed)
                        continue
                    try:
                        kind, pid, *said = conn.recv()
                    except (EOFError, OSError):
                        continue
                    if pid not in workers:  # from a worker given up on earlier
                        conn.close()
                        continue
                    if kind == "failed":  # its one line says why; the log has nothing more
                        conn.close()  # which lets it exit
                        raise WorkerError(said[0])
                    infos, notes = said
                    workers[pid].connections.append(conn)
                    workers[pid].free.append(conn)
            except BaseException:
                for w in workers.values():
                    w.end()
                raise
        return sorted(workers.values(), key=lambda w: w.index), infos, notes

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _check_loading(workers, deadline: float, closed: bool) -> None:
    for w in workers:
        if w.process.poll() is not None:
            raise WorkerError(f"{w.stopped()} while loading the models; its error is in the log above")
    if closed:
        raise WorkerError("the worker pool was closed while a worker was loading")
    if time.monotonic() > deadline:
        raise WorkerError(
            "the model workers did not load within the time allowed; the log above shows how far they got"
        )


class WorkerPool:
    """Worker processes that each hold every system of a `WorkerSpec`, and the systems they offer.

    A worker that stops (killed, out of memory) fails the calls it was answering, with its exit
    code; with `restart`, a new one is started in its place and later calls wait for it if no
    other worker is left.
    """

    def __init__(
        self,
        door: _Door,
        workers: list[_Worker],
        infos: Sequence[SystemInfo],
        notes: Sequence[str],
        restart: bool = True,
        timeout: float = 300.0,
    ):
        self._door, self._workers, self._restart, self._timeout = door, workers, restart, timeout
        self._ready = threading.Condition()
        self._restarting = 0  # replacements loading
        self.systems: dict[str, SpokenDialogueSystem] = {i.name: RemoteSystem(i, self) for i in infos}
        self.notes = list(notes)  # one line per reason a system did not load

    @classmethod
    def start(cls, spec: WorkerSpec, workers: int = 1, timeout: float = 300.0, restart: bool = True) -> WorkerPool:
        """Launch `workers` processes and wait until each has loaded the systems."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        door = _Door(spec)
        try:
            admitted, infos, notes = door.admit({i: door.launch(i) for i in range(workers)}, time.monotonic() + timeout)
        except BaseException:
            door.close()
            raise
        return cls(door, admitted, infos, notes, restart, timeout)

    def _replace(self, index: int) -> None:
        """Start a worker in the place of worker `index`, which stopped."""
        try:
            (worker,), _, _ = self._door.admit({index: self._door.launch(index)}, time.monotonic() + self._timeout)
        except (WorkerError, OSError) as e:
            print(f"model workers: worker {index} not replaced: {e}", file=sys.stderr)
            worker = None
        with self._ready:
            self._restarting -= 1
            if worker is not None and self._door.closed:
                worker.end()
            elif worker is not None:
                self._workers[index] = worker
            self._ready.notify_all()

    def stream(
        self, name: str, audio, history: tuple[Turn, ...], options: GenerationOptions, text: str | None
    ) -> Iterator[Reply]:
        """Run `name`'s `stream` in a worker; closing the iterator early cancels the reply there."""
        worker, conn = self._send(("stream", name, audio, history, options, text), _home_key(audio, history, text))
        finished = broken = False
        try:
            while True:
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError) as e:
                    broken = True
                    raise WorkerError(self._lost(worker)) from e
                if kind == "reply":
                    yield value
                    continue
                finished = True
                if kind == "error":
                    raise value
                return
        finally:
            if not (finished or broken):
                broken = not _cancel(conn)
            self._release(worker, conn, broken)

    def evidence(self, system: SpokenDialogueSystem, clip: np.ndarray, scores, transcript: str | None) -> dict:
        """The evidence behind a finished reply's emotion (`EvidenceReader.read`), read in a worker:
        the words' classifier and the recogniser it needs stay out of the server's process."""
        call = ("evidence", system.name, clip, dict(scores), transcript)
        worker, conn = self._send(call, _home_key(clip, (), None))
        broken = True
        try:
            kind, value = conn.recv()
            broken = False
        except (EOFError, OSError) as e:
            raise WorkerError(self._lost(worker)) from e
        finally:
            self._release(worker, conn, broken)
        if kind != "evidence":  # a bug on one side or the other, not the visitor's to fix
            raise WorkerError(f"model worker {worker.index} answered an evidence request with {kind!r}")
        return value

    def _send(self, call: tuple, key: int) -> tuple[_Worker, Connection]:
        """A worker's connection that has taken `call`. A worker found stopped before the call (killed
        while idle) is retired, replaced, and the call goes to the next one: none of it ran, so the
        visitor need not hear of it."""
        for _ in range(len(self._workers) + 1):
            worker, conn = self._acquire(key)
            try:
                conn.send(call)
                return worker, conn
            except OSError:
                self._release(worker, conn, broken=True)
        raise WorkerError(f"{worker.stopped()} before the call, as did every worker tried; restart the app")

    def _lost(self, worker: _Worker) -> str:
        """What a caller whose reply a worker's end cut short is told: one line, what happened and what to do."""
        then = "a new one is starting in its place" if self._restart else "the other workers, if any, go on"
        return f"The model stopped while answering: {worker.stopped()} during the reply; {then} — send your turn again."

    def _acquire(self, key: int) -> tuple[_Worker, Connection]:
        """A free connection of the least busy worker, the home one (`key`) among equals."""
        with self._ready:
            while True:
                alive = [w for w in self._workers if w.alive]
                if not alive and not self._restarting:
                    raise WorkerError("every model worker has stopped (the log says why); restart the app")
                free = [w for w in alive if w.free]
                if free:
                    least = min(w.busy for w in free)
                    home = alive[key % len(alive)]
                    worker = home if home in free and home.busy == least else next(w for w in free if w.busy == least)
                    return worker, worker.free.pop()
                self._ready.wait()

    def _release(self, worker: _Worker, conn: Connection, broken: bool) -> None:
        with self._ready:
            if not broken:
                worker.free.append(conn)
            else:
                conn.close()
            if broken and worker.alive:  # the first call to find it gone: end it for good, start another
                worker.alive = False
                # Killed, not just closed: its other calls' connections then end too, and those calls raise.
                threading.Thread(target=worker.end, name=f"end-worker-{worker.index}", daemon=True).start()
                if self._restart and not self._door.closed:
                    self._restarting += 1
                    threading.Thread(
                        target=self._replace, args=(worker.index,), name=f"replace-worker-{worker.index}", daemon=True
                    ).start()
            self._ready.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """End the workers: each exits when its connections close."""
        self._door.close()
        for w in self._workers:
            w.end(timeout)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]


def _launch(config: dict) -> subprocess.Popen:
    """`python -m blsp_emo.serving.workers`, with its configuration (and the key) on stdin, not in argv."""
    root = str(Path(__file__).resolve().parents[2])  # the package is importable wherever the server runs
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "blsp_emo.serving.workers"], stdin=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
    except BrokenPipeError:  # it has already exited: the caller reports how
        pass
    return proc


def _home_key(audio, history: tuple[Turn, ...], text: str | None) -> int:
    """A number fixed by the conversation's first turn, so its turns go to one worker when they can."""
    first = history[0] if history else Turn("user", text, audio if isinstance(audio, np.ndarray) else None)
    if first.audio is not None:
        return zlib.crc32(np.ascontiguousarray(first.audio).data)
    return zlib.crc32(str(first.text if first.text is not None else audio).encode())


def _cancel(conn: Connection) -> bool:
    """Stop the reply running on `conn` and read up to its end; False if the connection broke."""
    try:
        conn.send(("cancel",))
        while conn.recv()[0] not in TERMINAL:
            pass
        return True
    except (EOFError, OSError):
        return False
