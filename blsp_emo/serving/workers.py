"""The model worker process, `python -m blsp_emo.serving.workers`: it loads the systems and answers calls.

`WorkerPool` (blsp_emo.serving.pool) starts it with its configuration on stdin; it connects back
`slots` times and answers each connection's calls in a thread of its own (the messages are in
blsp_emo.serving.protocol). The process settings it applies, `apply_threads` and `freeze_loaded`,
serve a process that runs the systems itself (`app.py --workers 0`) too.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import sys
import threading
import traceback
from multiprocessing.connection import Client, Connection

from blsp_emo.model.weights import CorruptWeightsError
from blsp_emo.options import default_device
from blsp_emo.serving.evidence import EvidenceReader
from blsp_emo.serving.protocol import SystemInfo, WorkerSpec
from blsp_emo.systems.base import SpokenDialogueSystem, paced


def apply_threads(threads: int) -> None:
    """Torch's intra-op threads for this process (0: leave its default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def freeze_loaded() -> None:
    """Leave everything loaded so far (modules, models, the page) out of the cyclic garbage collector.

    A full collection walks every object the collector tracks and holds the GIL throughout: 0.2 s in
    a worker with the demo models, 0.1 s in the page's process, a pause that lands on whatever
    replies are in flight (docs/serving.md). What exists once loading is done lives as long as
    the process, so walking it finds nothing; later objects are still collected.
    """
    gc.collect()  # the garbage of loading goes now, rather than living on frozen
    gc.freeze()


def serve(config: dict) -> None:
    """Load the systems, connect `slots` times to the pool and answer calls until it closes them."""
    from blsp_emo.systems import load_systems

    spec = WorkerSpec(**{**config["spec"], "names": tuple(config["spec"]["names"])})
    apply_threads(spec.threads)
    device = spec.device or default_device()
    try:
        systems, notes = load_systems(spec.names, **{**spec.parts(), "device": device})
    except CorruptWeightsError as e:  # the pool says it in one line, as a server that loads in process would
        _report_failure(config, str(e))
        sys.exit(2)
    infos = [SystemInfo.of(s) for s in systems.values()]
    reader = EvidenceReader(spec.model, spec.asr, spec.ser, device)  # its models load on the first turn's evidence
    freeze_loaded()
    connections = [_connect(config) for _ in range(spec.slots)]
    answering = [
        threading.Thread(target=_answer_calls, args=(conn, systems, spec.stream_interval, reader), name=f"slot-{i}")
        for i, conn in enumerate(connections)
    ]
    for conn, thread in zip(connections, answering):
        conn.send(("ready", os.getpid(), infos, notes))
        thread.start()
    for thread in answering:
        thread.join()


def _connect(config: dict) -> Connection:
    return Client(config["address"], family="AF_UNIX", authkey=bytes.fromhex(config["key"]))


def _report_failure(config: dict, message: str) -> None:
    """Tell the pool why the models did not load, and wait until it has read it (it closes the
    connection): a worker that exited first would be reported by its exit code alone."""
    conn = _connect(config)
    conn.send(("failed", os.getpid(), message))
    conn.poll(60)


def _answer_calls(
    conn: Connection, systems: dict[str, SpokenDialogueSystem], interval: float, reader: EvidenceReader
) -> None:
    while True:
        try:
            request = conn.recv()
            if request[0] == "stream":
                _answer(conn, systems[request[1]], *request[2:], interval=interval)
            elif request[0] == "evidence":  # read once its reply is done; never raises
                conn.send(("evidence", reader.read(systems[request[1]], *request[2:])))
            # anything else is a cancel that came after its reply had ended
        except (EOFError, OSError):  # the pool closed the connection (or its process ended)
            conn.close()
            return


def _answer(conn: Connection, system: SpokenDialogueSystem, audio, history, options, text, interval: float) -> None:
    """Send the reply as it grows, at most every `interval` s; a failure of the call goes back to the
    caller, one of the connection up.

    Pacing here rather than in the server: each message is a wake-up, a receive and an unpickling on
    the server's process, which serves every visitor, for a token the page would not show.
    """
    replies = paced(system.stream(audio, history, options, text), interval)
    try:
        while True:
            try:
                reply = next(replies)
            except StopIteration:
                conn.send(("end", None))
                return
            except Exception as e:  # the caller's error (a bad clip, bad options) or a bug: the caller raises it
                if not isinstance(e, ValueError):
                    traceback.print_exc()
                conn.send(("error", _portable(e)))
                return
            if conn.poll() and conn.recv()[0] == "cancel":
                conn.send(("cancelled", None))
                return
            conn.send(("reply", reply))
    finally:
        replies.close()  # a cancelled reply stops decoding


def _portable(error: Exception) -> Exception:
    """`error`, or a RuntimeError with its message where it does not survive pickling."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


if __name__ == "__main__":  # run as a script, this file is `__main__`: take the classes from the package
    from blsp_emo.serving.workers import serve as _serve

    _serve(json.loads(sys.stdin.read()))
