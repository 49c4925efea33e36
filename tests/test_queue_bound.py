"""The queue's bound holds under a burst of joins, and the study's lane is never starved by the model's.

Gradio's `Queue.push` compares the queue's size with `max_size`, then awaits the event's validator,
then appends: forty joins at once all passed the check (38 waiting against 16). The app's
`WakingQueue` reserves a slot before any await (`webui/waking_queue.py`).
"""

import asyncio
import socket
import threading
import time
import uuid

import gradio as gr
import httpx
import pytest
from gradio.queueing import Queue
from gradio_client import Client

import app
from webui import study_tabs
from webui.study_api import STUDY_QUEUE, STUDY_WAITING
from webui.waking_queue import WakingQueue

MAX_QUEUE, BURST, STUDY_LANE = 16, 40, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lanes_app():
    """A model event that holds its one slot until released (behind a validator, an await between
    Gradio's check and its append, as the app's turns have) and a study event in a lane of its own."""
    started, release = threading.Event(), threading.Event()

    def slow(text):
        started.set()
        release.wait(30)  # bounded: the fixture releases it at the end anyway
        return text

    def checked(text):
        time.sleep(0.05)  # a validator that takes a moment: every join of the burst is inside it at once
        return [gr.validate(True, "")]

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        box.submit(slow, box, out, api_name="slow", concurrency_id="model", concurrency_limit=1, validator=checked)
        rate = gr.Button()
        rate.click(lambda text: f"rated {text}", box, out, api_name="rate", **STUDY_QUEUE)
    demo.queue(max_size=MAX_QUEUE)
    demo._queue = WakingQueue.like(demo._queue, lanes={STUDY_QUEUE["concurrency_id"]: STUDY_LANE})
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield demo, started
    release.set()
    deadline = time.monotonic() + 10  # let the flood drain: a server closed mid-job waits out its grace
    while (len(demo._queue) or demo._queue.get_active_worker_count()) and time.monotonic() < deadline:
        time.sleep(0.05)
    demo.close()


def _fn_index(demo: gr.Blocks, api_name: str) -> int:
    return next(i for i, fn in demo.fns.items() if fn.api_name == api_name)


def _burst(url: str, fn_index: int, n: int) -> list[httpx.Response]:
    """`n` joins posted at the same moment, each from its own session, as a flood of callers would."""
    gate, answers = threading.Barrier(n), [None] * n

    def join(i: int) -> None:
        body = {"data": [f"flood {i}"], "fn_index": fn_index, "session_hash": uuid.uuid4().hex[:10]}
        with httpx.Client(timeout=30) as client:
            gate.wait(10)
            answers[i] = client.post(f"{url}gradio_api/queue/join", json=body)

    threads = [threading.Thread(target=join, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def _fill_the_model_lane(demo: gr.Blocks, started: threading.Event) -> tuple[list[httpx.Response], int]:
    """One turn running (holding the model's only slot), then a burst of joins; the most ever waiting."""
    client = Client(demo.local_url, verbose=False)
    client.submit("first", api_name="/slow")
    assert started.wait(30)
    queue, most, done = demo._queue, [0], threading.Event()

    def sample() -> None:  # the queue's size while the burst lands
        while not done.is_set():
            most[0] = max(most[0], len(queue), queue.waiting(None))
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        answers = _burst(demo.local_url, _fn_index(demo, "slow"), BURST)
    finally:
        done.set()
        sampler.join(10)
    client.close()
    return answers, most[0]


@pytest.mark.server
def test_a_burst_of_joins_fills_the_queue_exactly_to_its_bound(lanes_app):
    demo, started = lanes_app
    answers, most = _fill_the_model_lane(demo, started)
    accepted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert most <= MAX_QUEUE  # never more waiting, not even for a moment
    assert (len(accepted), len(refused)) == (MAX_QUEUE, BURST - MAX_QUEUE)  # the slot holds: none started
    assert len(demo._queue) == MAX_QUEUE and demo._queue.waiting(None) == MAX_QUEUE  # no reservation leaked
    for answer in refused:
        assert answer.status_code == 503  # Gradio's "queue full": the page and gradio_client say "busy"
        assert "busy" in answer.json()["detail"] and "try again" in answer.json()["detail"]


@pytest.mark.server
def test_the_study_is_served_while_the_model_lane_is_full(lanes_app):
    demo, started = lanes_app
    _fill_the_model_lane(demo, started)
    assert demo._queue.waiting(None) == MAX_QUEUE  # full: another turn is refused
    client = Client(demo.local_url, verbose=False)
    with pytest.raises(Exception, match="(?i)queue is full|busy"):
        client.predict("one more", api_name="/slow")
    assert client.predict("trial 3", api_name="/rate") == "rated trial 3"  # the rater still gets through
    client.close()
    # and the study's own bound holds too: a burst of ratings is cut at its lane's bound, never at the model's
    ratings = _burst(demo.local_url, _fn_index(demo, "rate"), 12)
    assert all(a.status_code in (200, 503) for a in ratings)
    assert sum(a.status_code == 200 for a in ratings) >= STUDY_LANE  # a shared bound refused them all
    assert len(demo._queue) <= MAX_QUEUE + STUDY_LANE


def test_a_refused_or_failed_join_gives_its_slot_back(monkeypatch):
    """Gradio's push raising or refusing (a failing validator) releases the reservation."""
    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(lambda t: t, box, box, concurrency_id="model")
    demo.queue(max_size=2)
    queue = WakingQueue.like(demo._queue)
    fn_index = next(iter(demo.fns))
    body = type("Body", (), {"fn_index": fn_index, "session_hash": "s"})()

    async def refuse(self, *args, **kwargs):
        assert queue.waiting(None) == 1  # reserved while Gradio's push runs
        await asyncio.sleep(0)
        return False, "invalid", "validator_error"

    async def fail(self, *args, **kwargs):
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    monkeypatch.setattr(Queue, "push", refuse)
    assert asyncio.run(queue.push(body, None, None)) == (False, "invalid", "validator_error")
    assert queue.waiting(None) == 0
    monkeypatch.setattr(Queue, "push", fail)
    with pytest.raises(RuntimeError):
        asyncio.run(queue.push(body, None, None))
    assert queue.waiting(None) == 0


def test_the_app_gives_the_study_a_lane_of_its_own(monkeypatch):
    demo = app.build_demo({}, None, max_queue=16)
    assert demo._queue.lanes == {} and demo._queue.bound(None) == 16  # no study: one lane, as before
    monkeypatch.setattr(study_tabs, "build_tabs", lambda study: None)  # the tabs need a real study
    queue = app.build_demo({}, None, max_queue=16, study=object())._queue
    assert queue.lanes == {STUDY_QUEUE["concurrency_id"]: STUDY_WAITING}
    assert (queue.bound(None), queue.bound("study"), queue.max_size) == (16, STUDY_WAITING, 16 + STUDY_WAITING)
    with pytest.raises(ValueError):
        WakingQueue(
            live_updates=True,
            concurrency_count=4,
            update_intervals=1,
            max_size=2,
            blocks=demo,
            lanes={"study": 3},
        )
