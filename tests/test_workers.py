"""The model worker pool: systems in processes of their own answer exactly as they do in this one."""

import gc
import subprocess
import sys
import threading
import weakref
import zlib
from pathlib import Path

import pytest

import tiny
from blsp_emo import GenerationOptions, available_systems
from blsp_emo.audio import AudioError
from blsp_emo.prompts import Turn
from blsp_emo.serving import pool as pool_module
from blsp_emo.serving.pool import RemoteSystem, WorkerPool, _home_key, _Worker
from blsp_emo.serving.protocol import WorkerError, WorkerSpec
from blsp_emo.serving.workers import freeze_loaded
from blsp_emo.systems import Reply, Timings, load_systems, paced

GREEDY = GenerationOptions(max_new_tokens=12, greedy=True)
LONG = GenerationOptions(max_new_tokens=64, min_new_tokens=48, greedy=True)  # long enough to cancel midway
# Far longer than a kill takes: the worker is still decoding (not done and waiting) when it is killed.
ENDLESS = GenerationOptions(max_new_tokens=1500, min_new_tokens=1500, greedy=True)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool(bundle_dir):
    spec = WorkerSpec(tuple(available_systems()), model=str(bundle_dir), max_batch=4, threads=1, slots=2)
    pool = WorkerPool.start(spec, workers=2)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def local(bundle_dir):
    systems, notes = load_systems(available_systems(), model=str(bundle_dir))
    assert notes == []
    return systems


def _idle(pool: WorkerPool) -> bool:
    return all(w.alive and w.busy == 0 and len(w.free) == len(w.connections) for w in pool._workers)


@pytest.mark.server
def test_every_system_answers_as_it_does_in_process(pool, local):
    clip = tiny.tone(2.0, 180.0)
    assert list(pool.systems) == list(local) and pool.notes == []
    for name, remote in pool.systems.items():
        here = local[name]
        assert isinstance(remote, RemoteSystem)
        shown = (remote.description, remote.window_seconds, remote.emotion_source, remote.revision())
        assert shown == (here.description, here.window_seconds, here.emotion_source, here.revision())
        streamed = list(remote.stream(clip, options=GREEDY))
        assert [r.text for r in streamed] == [r.text for r in here.stream(clip, options=GREEDY)]
        assert [r.done for r in streamed] == [False] * (len(streamed) - 1) + [True]
        first, reference = streamed[-1], here.respond(clip, options=GREEDY)
        assert (first.token_ids, dict(first.emotion_scores), first.transcript) == (
            reference.token_ids,
            dict(reference.emotion_scores),
            reference.transcript,
        )
        history = first.turns(clip)  # a typed turn after the spoken one: the history travels with the call
        follow = remote.respond(text="and then?", history=history, options=GREEDY)
        assert follow.token_ids == here.respond(text="and then?", history=history, options=GREEDY).token_ids
    assert _idle(pool)


@pytest.mark.server
def test_closing_a_stream_cancels_the_reply_and_frees_its_connection(pool):
    system = pool.systems["blsp-emo"]
    for i in range(6):  # more than the pool's 4 connections: one not given back would block the next call
        replies = system.stream(text=f"tell me a story {i}", options=LONG)
        assert not next(replies).done
        replies.close()
        assert _idle(pool)
    assert len(system.respond(text="tell me a story", options=LONG).token_ids) >= LONG.min_new_tokens


@pytest.mark.server
def test_errors_come_back_with_their_type_and_message(pool, tmp_path):
    system = pool.systems["blsp-emo"]
    with pytest.raises(ValueError, match="the message is empty"):
        system.respond(text="   ")
    with pytest.raises(ValueError, match="exactly one of audio or text"):
        system.respond(tiny.tone(1.0), text="both")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVE not really")
    with pytest.raises(AudioError, match="corrupt.wav"):  # a path is decoded in the worker
        system.respond(str(corrupt))
    assert _idle(pool) and system.respond(text="still here?", options=GREEDY).done


@pytest.mark.server
def test_concurrent_calls_run_in_different_workers(pool, local):
    """Two calls at once go to the two workers (each the least busy), and neither sees the other's turn."""
    system, here = pool.systems["cascade"], local["cascade"]
    texts = ["the first visitor speaks", "the second visitor speaks"]
    started, replies, used = threading.Barrier(2), {}, []

    def visit(text):
        stream = system.stream(text=text, options=LONG)
        first = next(stream)
        used.append({w.index for w in pool._workers if w.busy})
        started.wait(timeout=60)  # both calls hold a connection here
        replies[text] = [first, *stream][-1]

    threads = [threading.Thread(target=visit, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert used and max(len(u) for u in used) == 2
    for text in texts:
        assert replies[text].token_ids == here.respond(text=text, options=LONG).token_ids
    assert _idle(pool)


def test_a_conversation_keeps_its_home_worker():
    clip = tiny.tone(1.0)
    first = _home_key(clip, (), None)
    later = (Turn("user", audio=clip), Turn("assistant", "I hear you."), Turn("user", "and?"), Turn("assistant", "ok"))
    assert _home_key(None, later, "one more") == first == zlib.crc32(clip.data)
    assert _home_key(None, (), "hello") == _home_key(None, (Turn("user", "hello"), Turn("assistant", "hi")), "x")


def test_routing_prefers_the_least_busy_worker_then_home():
    workers = [_Worker(i, process=None, connections=["a", "b"], free=["a", "b"]) for i in range(2)]
    pool = WorkerPool(None, workers, [], [], restart=False)
    home, _ = pool._acquire(key=1)
    assert home is workers[1]  # both idle: home
    other, conn = pool._acquire(key=1)
    assert other is workers[0]  # home busy, the other idle: the idle one
    pool._release(other, conn, broken=False)
    assert pool._acquire(key=0)[0] is workers[0]  # home again: it has one call, as worker 1 has
    workers[0].alive = False  # a stopped worker takes no calls
    assert pool._acquire(key=0)[0] is workers[1]
    workers[1].alive = False
    with pytest.raises(WorkerError, match="every model worker has stopped"):
        pool._acquire(key=0)


def _killed_mid_reply(pool: WorkerPool, system, index: int, text: str) -> tuple[int, WorkerError]:
    """Kill worker `index` while it answers `text` (a reply far longer than the wait for its first
    update); the pid it had and the error the caller got."""
    replies = system.stream(text=text, options=ENDLESS)
    assert not next(replies).done
    victim = pool._workers[index].process
    victim.kill()
    victim.wait()
    with pytest.raises(WorkerError) as raised:
        list(replies)
    return victim.pid, raised.value


@pytest.mark.server
def test_a_killed_worker_is_named_and_the_others_go_on(bundle_dir):
    spec = WorkerSpec(("blsp-emo",), model=str(bundle_dir), threads=1, slots=1)
    pool = WorkerPool.start(spec, workers=2, restart=False)
    try:
        system = pool.systems["blsp-emo"]
        homed = next(f"hello {i}" for i in range(100) if _home_key(None, (), f"hello {i}") % 2 == 0)
        idle = pool._workers[0].process
        idle.kill()  # while idle: its next call had not started, so worker 1 takes it
        idle.wait()
        assert system.respond(text=homed, options=GREEDY).done and not pool._workers[0].alive
        pid, error = _killed_mid_reply(pool, system, 1, homed)
        assert str(error) == (
            f"The model stopped while answering: model worker 1 (pid {pid}) exited with code -9 during the reply; "
            "the other workers, if any, go on — send your turn again."
        )
        with pytest.raises(WorkerError, match="every model worker has stopped"):
            system.respond(text=homed, options=GREEDY)
    finally:
        pool.close()


@pytest.mark.server
def test_a_killed_worker_is_replaced_and_later_calls_wait_for_it(bundle_dir):
    pool = WorkerPool.start(WorkerSpec(("blsp",), model=str(bundle_dir), threads=1, slots=2), workers=1)
    try:
        system = pool.systems["blsp"]
        old, error = _killed_mid_reply(pool, system, 0, "hello?")
        assert f"(pid {old}) exited with code -9 during the reply; a new one is starting in its place" in str(error)
        assert str(error).endswith("send your turn again.")
        assert system.respond(text="are you back?", options=GREEDY).done  # waits for the new worker
        (new,) = pool.pids
        assert new != old and _idle(pool)
        pool._workers[0].process.kill()  # killed while idle: the next call waits for its replacement
        pool._workers[0].process.wait()
        assert system.respond(text="still there?", options=GREEDY).done
        assert pool.pids[0] not in (old, new) and _idle(pool)
    finally:
        pool.close()


@pytest.mark.server
def test_missing_models_are_notes_as_in_process(tmp_path):
    pool = WorkerPool.start(WorkerSpec(("blsp-emo", "cascade"), model=str(tmp_path / "missing"), threads=1), workers=1)
    try:
        _, expected = load_systems(["blsp-emo", "cascade"], model=str(tmp_path / "missing"))
        assert pool.systems == {} and pool.notes == expected and expected
    finally:
        pool.close()


@pytest.mark.server
def test_a_worker_that_cannot_start_is_reported(monkeypatch, bundle_dir):
    monkeypatch.setattr(pool_module.sys, "executable", "/bin/false")  # exits 1 at once, reading nothing
    with pytest.raises(WorkerError, match=r"model worker 0 \(pid \d+\) exited with code 1 while loading"):
        WorkerPool.start(WorkerSpec(("blsp-emo",), model=str(bundle_dir)), workers=1)


@pytest.mark.server
def test_workers_exit_when_the_server_goes_away(bundle_dir):
    """A server killed outright leaves no worker behind: each sees its connections close."""
    script = (
        "import sys; from blsp_emo.serving.pool import WorkerPool; from blsp_emo.serving.protocol import WorkerSpec; "
        f"pool = WorkerPool.start(WorkerSpec(('blsp',), model={str(bundle_dir)!r}, threads=1), workers=1); "
        "print(pool.pids[0], flush=True); sys.stdin.read()"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    pid = int(server.stdout.readline())
    server.kill()
    server.wait()
    deadline = 60
    for _ in range(deadline * 10):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        threading.Event().wait(0.1)
    else:
        pytest.fail(f"worker {pid} still running {deadline} s after its server was killed")


@pytest.mark.server
def test_a_server_of_workers_never_imports_torch():
    """The page's process decodes audio and streams replies without the model code (it starts sooner)."""
    code = (
        "import sys, app, webui.demo_page, webui.study_tabs; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_after_the_freeze_loaded_objects_are_left_out_and_new_garbage_is_still_collected():
    class Node:
        pass

    loaded = Node()
    freeze_loaded()
    try:
        assert gc.get_freeze_count() > 10 * len(gc.get_objects())  # a full collection walks far less
        assert not any(o is loaded for o in gc.get_objects())
        cycle = Node()
        cycle.me, gone = cycle, weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None  # a cycle made after the freeze is still collected
    finally:
        gc.unfreeze()


@pytest.mark.server
def test_a_paced_worker_sends_the_first_token_and_the_end_and_still_cancels(bundle_dir, local):
    spec = WorkerSpec(("blsp-emo",), model=str(bundle_dir), threads=1, slots=1, stream_interval=60.0)
    paced_pool = WorkerPool.start(spec, workers=1)
    try:
        system, clip = paced_pool.systems["blsp-emo"], tiny.tone(2.0, 180.0)
        first, end = list(system.stream(clip, options=GREEDY))  # nothing between: 60 s never passed
        alone = local["blsp-emo"].respond(clip, options=GREEDY)
        assert len(first.token_ids) == 1 and not first.done and end.done and end.token_ids == alone.token_ids
        replies = system.stream(text="tell me a story", options=LONG)
        next(replies)
        replies.close()  # cancelled while the worker decodes the tokens it holds back
        assert _idle(paced_pool)
        assert len(system.respond(text="tell me a story", options=LONG).token_ids) >= LONG.min_new_tokens
    finally:
        paced_pool.close()


def test_paced_keeps_the_first_and_last_replies_and_closes_what_it_paces():
    def replies():
        try:
            for i in range(5):
                yield Reply("s", "x" * i, None, {}, None, Timings(0.0, 0.0), (), None, i == 4)
        finally:
            closed.append(True)

    closed = []
    assert [r.text for r in paced(replies(), 60.0)] == ["", "xxxx"]
    assert [r.text for r in paced(replies(), 0.0)] == ["", "x", "xx", "xxx", "xxxx"]
    stream = paced(replies(), 60.0)
    next(stream)
    stream.close()
    assert closed == [True, True, True]
