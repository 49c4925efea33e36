"""The app's Gradio queue waits for work instead of polling, and still starts every event."""

import inspect
import socket
import threading
import time

import gradio as gr
import pytest
from gradio.queueing import Queue
from gradio_client import Client

import app
from webui.waking_queue import WakingQueue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def echo_app():
    """A one-event app on a waking queue: one event at a time, so the others wait for a slot."""
    running, overlapped = [0], [False]
    lock = threading.Lock()

    def echo(text, progress=gr.Progress()):  # noqa: B008 - how Gradio asks for a progress tracker
        progress(0.5, desc="echoing")  # sent by the progress loop while the job runs
        with lock:
            running[0] += 1
            overlapped[0] |= running[0] > 1
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return text

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        box.submit(echo, box, out, api_name="echo", concurrency_limit=1)
    demo.queue(max_size=8)
    demo._queue = WakingQueue.like(demo._queue)
    demo._queue.idle_look_s = 3600.0  # no look on a timer: only wake-ups can start the waiting events
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield demo, overlapped
    demo.close()


@pytest.mark.server
def test_waiting_events_start_when_a_slot_frees(echo_app):
    demo, overlapped = echo_app
    client = Client(demo.local_url, verbose=False)
    jobs = [client.submit(f"turn {i}", api_name="/echo") for i in range(4)]
    assert [job.result(timeout=60) for job in jobs] == [f"turn {i}" for i in range(4)]
    assert not overlapped[0]  # the concurrency limit still holds
    client.close()


@pytest.mark.server
def test_an_idle_queue_does_not_look_for_work(echo_app, monkeypatch):
    demo, _ = echo_app
    looks = []
    monkeypatch.setattr(WakingQueue, "__len__", lambda self: looks.append(1) or Queue.__len__(self))
    time.sleep(0.5)  # Gradio's own loop looks every millisecond: about 500 times
    assert len(looks) <= 2
    client = Client(demo.local_url, verbose=False)
    assert client.predict("still here", api_name="/echo") == "still here"
    client.close()


class _CountingList(list):
    """`active_jobs` that counts the looks through it."""

    looks = 0

    def __iter__(self):
        _CountingList.looks += 1
        return super().__iter__()


@pytest.mark.server
def test_progress_is_sent_while_a_job_runs_and_not_looked_for_while_none_does(echo_app):
    demo, _ = echo_app
    client = Client(demo.local_url, verbose=False)
    job = client.submit("with progress", api_name="/echo")
    seen = []
    while not job.done():
        seen += [unit.desc for unit in (job.status().progress_data or [])]
        time.sleep(0.01)
    assert job.result() == "with progress" and "echoing" in seen
    demo._queue.active_jobs = _CountingList(demo._queue.active_jobs)
    _CountingList.looks = 0
    time.sleep(0.5)  # idle: Gradio's progress loop looks every 10 ms, about 50 times
    assert _CountingList.looks <= 2
    client.close()


def test_the_app_uses_it_with_its_settings_and_the_gradio_internals_it_drives_exist():
    demo = app.build_demo({}, None, concurrency=3, max_queue=5)
    queue = demo._queue
    assert isinstance(queue, WakingQueue) and (queue.max_size, queue.default_concurrency_limit) == (5, 3)
    for name in (
        "get_events",
        "process_events",
        "push",
        "get_active_worker_count",
        "broadcast_estimations",
        "_cancel_asyncio_tasks",
        "send_message",
        "start_progress_updates",
    ):
        assert callable(getattr(Queue, name, None)), name
    for name in (
        "active_jobs",
        "event_queue_per_concurrency_id",
        "event_analytics",
        "_asyncio_tasks",
        "delete_lock",
        "live_updates",
        "max_thread_count",
        "update_intervals",
        "blocks",
        "stopped",
        "progress_update_sleep_when_free",
        "max_size",
    ):
        assert hasattr(queue, name), name
    # the bound: Gradio's push checks `max_size` then awaits (the validator) before it appends to the
    # event's concurrency id's queue; `WakingQueue` reads an event's lane from the page's events
    assert "await" in inspect.getsource(Queue.push).split("max_size", 1)[1].split(".queue.append(event)")[0]
    assert hasattr(demo, "fns") and hasattr(demo, "state_holder")
    assert all(hasattr(fn, "concurrency_id") for fn in demo.fns.values())
    assert all(hasattr(q, "queue") for q in queue.event_queue_per_concurrency_id.values())
