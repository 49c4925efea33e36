"""Gradio's queue, woken when there is work instead of looking for it every millisecond.

Gradio's `Queue.start_processing` polls: whenever nothing can start, it sleeps 1 ms and looks
again, a thousand times a second for as long as the app runs. On the page's process, which serves
every visitor, that costs 8-9 % of a core while idle and competes for the GIL with the turns it
serves (docs/serving.md). `WakingQueue` starts jobs exactly as Gradio does, through its own
`get_events` and `process_events`, but sleeps until a request joins the queue or a job ends, the
only moments a waiting event can become ready, and looks once a second anyway. Its progress loop,
which Gradio runs every 10 ms for as long as the app runs, runs only while a job does: progress
(`gr.Progress`) exists only then.

Its bound on waiting events is exact and has lanes. Gradio's `push` compares the queue's size with
`max_size` and appends the event only after awaiting the event's validator, so a burst of joins all
pass the check and the queue overfills (40 at once held 38 against 16). `WakingQueue.push` checks
first, and counts a join that passed as waiting from that moment (it has reserved a slot) until
Gradio appends its event or refuses it, all without an await between check and reservation. The
concurrency ids in `lanes` (the rating study's) have bounds of their own, apart from the shared
bound of the others (the model's), so a flood of model requests cannot refuse raters; `max_size`
is the sum of the bounds, which Gradio's own check can then never reach (`docs/serving.md`).

It overrides Gradio internals of the pinned release (gradio 6.31: `requirements.txt`);
`tests/test_waking_queue.py` checks that they are still there and serves events through it, and
`tests/test_queue_bound.py` bursts joins at it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping

from gradio.queueing import Queue
from gradio.utils import run_coro_in_background, set_task_name


class WakingQueue(Queue):
    """A `gradio.queueing.Queue` whose dispatch loop waits for work instead of polling."""

    idle_look_s = 1.0  # with no wake-up, look anyway after this long (a wake-up that was missed costs this)
    busy = "The demo is busy: {waiting} requests are already waiting. Please try again in a minute."

    def __init__(self, *args, lanes: Mapping[str, int] | None = None, **kwargs):
        """Gradio's `Queue` arguments, and `lanes`: concurrency ids whose events may wait up to a bound
        of their own; the other events share what is left of `max_size` (None: no bound)."""
        super().__init__(*args, **kwargs)
        self.lanes = dict(lanes or {})
        if self.max_size is not None and self.max_size < sum(self.lanes.values()):
            raise ValueError(f"max_size {self.max_size} is less than the lanes' bounds {self.lanes}")
        self._joining: Counter[str | None] = Counter()  # per lane: joins past the check, not yet appended or refused

    @classmethod
    def like(cls, queue: Queue, lanes: Mapping[str, int] | None = None) -> WakingQueue:
        """A waking queue with the settings `Blocks.queue` gave `queue`, whose `max_size` stays the
        bound of the shared lane, plus `lanes` (concurrency id: its own bound on waiting events)."""
        lanes = dict(lanes or {})
        return cls(
            live_updates=queue.live_updates,
            concurrency_count=queue.max_thread_count,
            update_intervals=queue.update_intervals,
            max_size=None if queue.max_size is None else queue.max_size + sum(lanes.values()),
            blocks=queue.blocks,
            default_concurrency_limit=queue.default_concurrency_limit,
            lanes=lanes,
        )

    def _lane(self, body) -> str | None:
        """The lane of the event `body` asks for: its concurrency id if that has a bound of its own,
        else None (the shared lane). Read from the page's events, not the caller's session: looking a
        session up builds it, which costs more than a turn and must not come before the check."""
        fn = self.blocks.fns.get(body.fn_index)
        if fn is None and body.session_hash in self.blocks.state_holder:  # an event `gr.render` made
            fn = self.blocks.state_holder[body.session_hash].blocks_config.fns.get(body.fn_index)
        concurrency_id = getattr(fn, "concurrency_id", None)
        return concurrency_id if concurrency_id in self.lanes else None

    def bound(self, lane: str | None) -> int | None:
        """How many events of `lane` may wait (joins being checked included); None: no bound."""
        if lane is not None:
            return self.lanes[lane]
        return None if self.max_size is None else self.max_size - sum(self.lanes.values())

    def waiting(self, lane: str | None) -> int:
        """Events of `lane` waiting for a slot, and joins of it that passed the check and are not yet
        appended or refused."""
        queues = self.event_queue_per_concurrency_id
        if lane is not None:
            appended = len(queues[lane].queue) if lane in queues else 0
        else:
            appended = sum(len(q.queue) for cid, q in queues.items() if cid not in self.lanes)
        return appended + self._joining[lane]

    def start(self):
        self._work = asyncio.Event()  # made here: `start` runs in the server's event loop
        self._running = asyncio.Event()  # set when a job starts; the progress loop clears it once none runs
        super().start()

    def _wake(self) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            work.set()

    async def push(self, body, request, username):
        if body.fn_index is None:
            return await super().push(body, request, username)  # Gradio's answer to that
        lane = self._lane(body)
        bound = self.bound(lane)
        if bound is not None and self.waiting(lane) >= bound:
            return False, self.busy.format(waiting=self.waiting(lane)), "queue_full"
        # Reserved before any await: Gradio's push awaits the event's validator before it appends the
        # event (or refuses it), and until then this join counts as waiting. Gradio's own size check
        # then sees fewer than `max_size` waiting, the sum of the bounds, and always lets it through.
        self._joining[lane] += 1
        try:
            answer = await super().push(body, request, username)
        finally:  # appended, refused, failed or cancelled: no longer joining (no await since the append)
            self._joining[lane] -= 1
        self._wake()  # a new event may be ready to start
        return answer

    async def process_events(self, *args, **kwargs):
        try:
            return await super().process_events(*args, **kwargs)
        finally:
            self._wake()  # its job slot and concurrency slot are free again

    async def start_progress_updates(self) -> None:
        # Gradio's loop, at Gradio's pace, while a job runs; with none, it waits for one to start.
        while not self.stopped:
            events = [event for job in self.active_jobs if job is not None for event in job]
            if not events:  # cleared here, where no job is seen: nothing can leave it set with none running
                self._running.clear()
                try:
                    await asyncio.wait_for(self._running.wait(), self.idle_look_s)
                except asyncio.TimeoutError:
                    pass
                continue
            for event in events:
                if event.progress_pending and event.progress:
                    event.progress_pending = False
                    self.send_message(event, event.progress)
            await asyncio.sleep(self.progress_update_sleep_when_free)

    async def start_processing(self) -> None:
        # `close` (from any thread) only sets `stopped`: the loop sees it at its next look, within
        # `idle_look_s`, and a server that shuts down cancels it sooner.
        try:
            while not self.stopped:
                self._work.clear()  # before looking: a wake-up during the look is not lost
                if len(self) and None in self.active_jobs:
                    async with self.delete_lock:
                        ready = self.get_events()
                    if ready:
                        self._start_job(*ready)
                        continue
                try:
                    await asyncio.wait_for(self._work.wait(), self.idle_look_s)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    pass
        finally:
            self.stopped = True
            self._cancel_asyncio_tasks()

    def _start_job(self, events: list, batch: bool, concurrency_id: str) -> None:
        """Take a job slot and a concurrency slot for `events` and process them in the background, with
        the bookkeeping Gradio's own loop does (start times for estimates, analytics, task names)."""
        self.active_jobs[self.active_jobs.index(None)] = events
        self._running.set()
        event_queue = self.event_queue_per_concurrency_id[concurrency_id]
        event_queue.current_concurrency += 1
        fn, start_time = events[0].fn, time.time()
        event_queue.start_times_per_fn[fn].add(start_time)
        for event in events:
            if (analytics := self.event_analytics.get(event._id)) is not None:
                analytics["status"] = "processing"
        task = run_coro_in_background(self.process_events, events, batch, start_time, fn)
        set_task_name(task, events[0].session_hash, fn._id, events[0]._id, batch)
        self._asyncio_tasks.add(task)
        task.add_done_callback(self._asyncio_tasks.discard)
        if self.live_updates:
            self.broadcast_estimations(concurrency_id)
