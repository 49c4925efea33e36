"""`python -m blsp_emo loadtest`: simulated visitors talking to a running app at once, as pages or API callers.

Each visitor keeps having short conversations (a spoken turn with its own clip, then typed turns
naming the visitor), greedy so that a conversation replayed gives the same replies. A page visitor
keeps its one session and presses Clear between conversations, as a person on the page does; a
gradio_client caller starts a new session for each (its conversation lives in the session). After
every turn a visitor checks that the conversation the server returns is exactly its own: its clip,
its words, in order, one reply per turn. Anything else counts as cross-talk. One visitor
alone and all of them together take turns against the same server, in `--rounds` alternating slices
of each phase's time: a shared machine's speed drifts by more than the load changes it (the
single-visitor median moved between 0.07 and 0.11 s from one run to the next), so the two
phases are measured side by side. Each phase also reports how many of its turns ran while another
did and what those took, and the CPU a turn cost the load test itself, the server and its model
workers (the last two with `--spawn`). On a virtual machine it also reports the CPU time the
hypervisor took from the machine ("steal" in /proc/stat) and which turns ran while it did: such a
turn waits for CPU that no code of ours uses. Loopback addresses only; visitors, time and requests
are bounded.

`--spawn` starts `python app.py` itself on a free loopback port, times it from process start until
`/` answers 200, samples its resident memory while the visitors talk, and stops it.

`--client` picks how a visitor talks to the app: `gradio_client` (its Python client), or `page`:
the requests the page's own JavaScript makes (run the page's load event when it opens, upload the
clip, join the queue, read the server-sent events as they arrive). gradio_client hands each server
message to the waiting caller from a queue it polls every 50 ms, which adds about 0.1 s to a turn
that a page does not wait for; `page` measures what the browser sees. A turn's time runs from
Send to its last message. The page uploads a clip when its recording stops (or the file is
dropped) and refuses Send until the upload is done, so a page visitor's turn starts after its
upload; gradio_client uploads inside the call, so its turns include theirs.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from blsp_emo.bench.app_process import machine_stolen_s, spawn_app
from blsp_emo.bench.load_report import _ratio, format_report, ratio_interval, round_summaries
from blsp_emo.bench.visitors import LoadOptions, check_loopback, run_slice, visitor_clips, visitors, warm_up


def loadtest(url: str, options: LoadOptions, server_cpu: Callable[[], dict[str, float]] | None = None) -> dict:
    """One visitor alone and `options.users` at once, in alternating slices; their latencies and the
    ratio the issue asks for (concurrent p95 over single p50).

    Each phase also reports the CPU its turns cost: this process's (the load test's own, which shares
    the machine with the app), and with `server_cpu` (a spawned app's `Server.cpu_s`) the server's
    and its workers'. On a shared machine CPU time per turn moves far less than latency does.
    """
    check_loopback(url)

    def cpu() -> dict[str, float]:
        return {"load_test": time.process_time(), **(server_cpu() if server_cpu else {}), "stolen": machine_stolen_s()}

    with tempfile.TemporaryDirectory() as tmp:
        clips = visitor_clips(Path(tmp), options.users)
        warm_up(url, options, clips[0])
        phases = [visitors(url, 1, options, clips), visitors(url, options.users, options, clips)]
        try:
            for round_ in range(options.rounds):
                for crowd in phases:
                    crowd[0].phase.round, before = round_, cpu()
                    run_slice(crowd, options.seconds / options.rounds)
                    crowd[0].phase.add_cpu(before, cpu())
        finally:
            for visitor in (v for crowd in phases for v in crowd):
                visitor.line.close()
        alone, together = (crowd[0].phase.summary() for crowd in phases)
    return {
        "url": url,
        "options": asdict(options),
        "single": alone,
        "concurrent": together,
        "p95_over_single_p50": _ratio(together["p95_s"], alone["p50_s"]),
        "spoken_p95_over_single_p50": _ratio(together["spoken_p95_s"], alone["spoken_p50_s"]),
        "typed_p95_over_single_p50": _ratio(together["typed_p95_s"], alone["typed_p50_s"]),
        # The same ratio over the turns during which the hypervisor took no CPU, in both phases: what
        # the app's own contention does, apart from the host's (the target is the ratio above).
        "unstolen_p95_over_single_p50": _ratio(together["unstolen_p95_s"], alone["unstolen_p50_s"]),
        "p95_over_single_p50_90ci": ratio_interval(*(crowd[0].phase.by_round(options.rounds) for crowd in phases)),
        "rounds": round_summaries(phases[0][0].phase, phases[1][0].phase, options.rounds),
    }


def main(args) -> int:
    options = LoadOptions(args.users, args.seconds, args.think, args.turns, client=args.client, rounds=args.rounds)
    if bool(args.url) == bool(args.spawn):
        raise ValueError("give --url URL of a running app (loopback) or --spawn to start one")
    if args.app_args and not args.spawn:
        raise ValueError("--app-args is for the app that --spawn starts")
    server = None
    if args.spawn:
        server = spawn_app((*(("--tts", "none") if args.no_tts else ()), *shlex.split(args.app_args)))
        server.sample_memory()
    try:
        report = loadtest(server.url if server else args.url, options, server.cpu_s if server else None)
    finally:
        if server:
            server.stop()
    if server:
        report.update(startup_s=server.startup_s, server_peak_rss_mb=server.peak_rss_mb)
    failed = report["single"]["errors"] + report["concurrent"]["errors"] + report["concurrent"]["cross_talk"]
    if args.json:
        print(json.dumps(report))
    else:
        for line in format_report(report):
            print(line)
    return 1 if failed else 0
