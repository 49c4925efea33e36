"""`python -m blsp_emo loadtest`: concurrent visitors on a real app process, loopback only, bounded."""

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blsp_emo.bench.app_process import child_pids, machine_stolen_s, process_rss_mb, spawn_app, tree_rss_mb
from blsp_emo.bench.load_report import Phase, _overlapping, ratio_interval, round_summaries
from blsp_emo.bench.loadtest import loadtest
from blsp_emo.bench.visitor_lines import PageLine
from blsp_emo.bench.visitors import LoadOptions, Visitor, check_loopback

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(bundle_dir):
    app = spawn_app(("--model", str(bundle_dir), "--tts", "none", "--systems", "blsp-emo", "--workers", "2"))
    yield app
    app.stop()


@pytest.mark.server
@pytest.mark.parametrize("client", ["gradio_client", "page"])
def test_visitors_see_only_their_own_conversations(server, client):
    options = LoadOptions(users=3, seconds=6.0, turns=2, max_tokens=8, client=client, rounds=2)
    report = loadtest(server.url, options, server.cpu_s)
    for phase in ("single", "concurrent"):
        p = report[phase]
        assert p["errors"] == 0 and p["cross_talk"] == 0, p
        assert p["turns"] >= 2 and 0 < p["p50_s"] <= p["p95_s"] <= p["max_s"]
        cpu = p["cpu_ms_per_turn"]  # the replies were decoded in the workers, served by the server
        assert set(cpu) == {"load_test", "server", "workers", "stolen"}, cpu
        assert all(cpu[k] > 0 for k in ("load_test", "server", "workers")) and cpu["stolen"] >= 0, cpu
    assert report["single"]["overlapped_turns"] == 0  # one visitor waits for each reply
    assert report["concurrent"]["users"] == 3 and report["p95_over_single_p50"] > 0
    assert report["unstolen_p95_over_single_p50"] is None or report["unstolen_p95_over_single_p50"] > 0
    low, high = report["p95_over_single_p50_90ci"]
    assert 0 < low <= high
    assert len(report["rounds"]) == 2 and sum(r["single_turns"] for r in report["rounds"]) == report["single"]["turns"]
    assert report["single"]["replays"] >= 1 and report["single"]["replay_mismatches"] == 0  # greedy replays agree


def test_overlapping_turns_are_those_that_share_any_moment_with_another():
    rng = random.Random(0)
    for _ in range(200):
        starts = [rng.uniform(0, 10) for _ in range(rng.randint(0, 12))]
        spans = [(start, start + rng.uniform(0.01, 1.0)) for start in starts]
        shared = {i for i, a in enumerate(spans) for j, b in enumerate(spans) if i != j and a[0] < b[1] and b[0] < a[1]}
        assert _overlapping(spans) == shared
    phase = Phase(2, spans=[(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)], stolen=[0.0, 0.02, 0.0], cpu_s={"server": 0.3})
    summary = phase.summary()
    assert (summary["overlapped_turns"], summary["alone_p50_s"]) == (2, 1.0)
    assert (summary["stolen_turns"], summary["stolen_p50_s"], summary["unstolen_p95_s"]) == (1, 1.5, 1.0)
    # The overlapped turns took 1.0 s and 1.5 s; method='nearest' rounds the median's index 0.5 to 0: 1.0 s.
    assert summary["overlapped_p50_s"] == 1.0
    assert summary["cpu_ms_per_turn"] == {"server": pytest.approx(100.0)}
    phase.rounds = [1, 0, 1]  # the round each turn was sent in
    assert phase.by_round(3) == [[1.5], [1.0, 1.0], []]


def test_each_round_reports_its_two_slices_and_what_the_hypervisor_took():
    alone, together = Phase(1, spans=[(0, 0.1), (5, 5.3)], rounds=[0, 1]), Phase(2, spans=[(1, 1.2)], rounds=[1])
    for phase, stolen in ((alone, (0.0, 0.5)), (together, (0.25, 0.0))):
        for taken in stolen:
            phase.add_cpu({"stolen": 1.0}, {"stolen": 1.0 + taken})
    first, second = round_summaries(alone, together, 2)
    assert (first["single_turns"], first["concurrent_turns"], first["p95_over_single_p50"]) == (1, 0, None)
    assert (first["single_stolen_s"], first["concurrent_stolen_s"]) == (0.0, 0.25)
    assert second["p95_over_single_p50"] == pytest.approx(0.2 / 0.3) and second["single_stolen_s"] == 0.5


def test_the_ratios_interval_narrows_as_the_single_phase_gets_more_turns():
    rng = random.Random(1)
    assert ratio_interval([[0.1] * 15], [[0.2] * 140]) == pytest.approx([2.0, 2.0])  # no spread: no doubt
    crowd = [rng.lognormvariate(-2.3, 0.3) for _ in range(140)]
    few, many = ([rng.lognormvariate(-2.5, 0.25) for _ in range(n)] for n in (15, 300))
    (low_few, high_few), (low_many, high_many) = ratio_interval([few], [crowd]), ratio_interval([many], [crowd])
    assert low_few < high_few and low_many < high_many and high_many - low_many < high_few - low_few
    assert ratio_interval([[]], [crowd]) is None and ratio_interval([few], [[]]) is None


def test_the_ratios_interval_counts_the_machines_drift_between_rounds():
    """Rounds on a machine whose speed drifts: their turns are not independent draws."""
    rng = random.Random(2)
    speeds = [0.8, 1.3, 0.9, 1.2, 1.0, 1.4]  # the machine's pace in each round, shared by both phases
    single = [[speed * rng.lognormvariate(-2.5, 0.1) for _ in range(5)] for speed in speeds]
    crowd = [[speed * 1.6 * rng.lognormvariate(-2.5, 0.1) for _ in range(25)] for speed in speeds]
    pooled = ratio_interval([[t for r in single for t in r]], [[t for r in crowd for t in r]])  # as if independent
    by_round = ratio_interval(single, crowd)
    assert by_round[1] - by_round[0] > 1.2 * (pooled[1] - pooled[0])
    assert ratio_interval([[0.1], [], [0.1]], [[0.2], [0.2], []]) == pytest.approx([2.0, 2.0])  # empty slices


def test_stolen_time_is_read_from_the_kernels_count(monkeypatch, tmp_path):
    assert machine_stolen_s() >= 0
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 900 0 0 0 25 0 0\ncpu0 50 0 25 450 0 0 0 12 0 0\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open", lambda path, *a, **k: real_open(stat if path == "/proc/stat" else path, *a, **k)
    )
    assert machine_stolen_s() == pytest.approx(25 / os.sysconf("SC_CLK_TCK"))  # the steal column of the total line
    stat.write_text("cpu  100 0 50\n")  # a kernel too old to count it
    assert machine_stolen_s() == 0.0


@pytest.mark.server
def test_the_memory_sampler_counts_the_model_workers(server):
    workers = child_pids(server.process.pid)
    assert len(workers) == 2 and all(
        "blsp_emo.serving.workers" in Path(f"/proc/{w}/cmdline").read_text() for w in workers
    )
    alone = process_rss_mb(server.process.pid)
    assert tree_rss_mb(server.process.pid) >= alone + sum(process_rss_mb(w) for w in workers) * 0.9 > alone > 0
    server.sample_memory(every=0.02, rewalk=0.05)  # the sampler keeps the tree's peak, workers included
    deadline = time.monotonic() + 10
    while server.peak_rss_mb < 0.9 * tree_rss_mb(server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.peak_rss_mb >= 0.9 * tree_rss_mb(server.process.pid)


@pytest.mark.server
def test_a_turn_keeps_what_the_hypervisor_took_beside_its_span(server, tmp_path):
    phase = Phase(1)
    visitor = Visitor(
        server.url, 0, tmp_path / "visitor0.wav", LoadOptions(users=1, seconds=1), phase, threading.Lock()
    )
    visitor._record(span=(0.0, 1.0), stolen=0.02)
    visitor._record(error="visitor 0: refused")  # an error has no span, and nothing stolen to keep
    visitor._record(span=(2.0, 2.5), spoken=True)
    assert phase.spans == [(0.0, 1.0), (2.0, 2.5)] and phase.stolen == [0.02, 0.0]
    assert phase.summary()["stolen_turns"] == 1
    visitor.line.close()


@pytest.mark.server
def test_the_cross_talk_check_can_fail(server, tmp_path):
    clip = tmp_path / "visitor0.wav"
    visitor = Visitor(server.url, 0, clip, LoadOptions(users=1, seconds=1), Phase(1), threading.Lock())
    mine = [
        {"role": "user", "content": [{"type": "file", "file": {"path": f"/tmp/x/{clip.name}"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "visitor 0 turn 1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
    ]
    sent = [(str(clip), ""), (None, "visitor 0 turn 1")]
    assert visitor._foreign(mine, sent) is None
    other_clip = [{**mine[0], "content": [{"type": "file", "file": {"path": "/tmp/x/visitor5.wav"}}]}, *mine[1:]]
    assert "visitor5.wav" in visitor._foreign(other_clip, sent)
    other_words = [*mine[:2], {"role": "user", "content": [{"type": "text", "text": "visitor 3 turn 1"}]}, mine[3]]
    assert "visitor 3 turn 1" in visitor._foreign(other_words, sent)
    assert "messages" in visitor._foreign(mine + mine[:2], sent)
    visitor.line.close()


@pytest.mark.server
def test_the_page_line_makes_the_pages_requests_and_reports_a_refused_clip(server, tmp_path):
    import soundfile as sf

    import tiny

    line, clip, picture = PageLine(server.url), tmp_path / "voice.wav", tmp_path / "picture.wav"
    assert [event["api_name"] for event in line.on_load] == ["open_session"]  # run as the page loads, untimed
    sf.write(clip, tiny.tone(1.0, 200.0), 16000)
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    first = line.talk(line.attach(str(clip)), "", 8)  # uploaded first, as the page does before Send
    assert first[0]["content"][0]["type"] == "file" and first[0]["content"][0]["file"]["path"].endswith("voice.wav")
    chat = line.talk(None, "and then?", 8)  # the same session: the server kept the conversation
    assert len(chat) == 4 and chat[:1] == first[:1] and chat[2]["content"][0]["text"] == "and then?"
    with pytest.raises(RuntimeError, match="not a readable audio file"):
        line.talk(line.attach(str(picture)), "", 8)
    with pytest.raises(RuntimeError, match="no-such-route answered 404"):
        line._request("GET", "no-such-route")
    session = line.session
    line.new_conversation()  # Clear, as a visitor presses it: the same page, a new conversation
    assert len(line.talk(None, "hello", 8)) == 2 and line.session == session
    line.new_session()
    assert len(line.talk(None, "hello again", 8)) == 2  # a new session starts a new conversation too
    line.close()


def test_only_loopback_and_bounded_runs():
    assert check_loopback("http://127.0.0.1:7860/")
    for url in ("http://example.com/", "http://10.0.0.2:7860/", "https://huggingface.co/spaces/x"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(url)
    with pytest.raises(ValueError):
        LoadOptions(users=1000)
    with pytest.raises(ValueError):
        LoadOptions(seconds=3600)
    with pytest.raises(ValueError, match="--rounds must be 1..10"):
        LoadOptions(seconds=10, rounds=20)


@pytest.mark.server
def test_command_line_refuses_a_remote_url():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "blsp_emo",
            "loadtest",
            "--url",
            "http://example.com/",
            "--users",
            "2",
            "--seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and "loopback" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.server
def test_app_arguments_are_only_for_a_spawned_app():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "blsp_emo", "loadtest", "--url", "http://127.0.0.1:9/", "--app-args", "--max-batch 0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2 and "--app-args is for the app that --spawn starts" in out.stderr


@pytest.mark.server
def test_command_line_json_against_a_running_app(server):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "blsp_emo",
            "loadtest",
            "--url",
            server.url,
            "--users",
            "2",
            "--seconds",
            "3",
            "--turns",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["concurrent"]["users"] == 2 and report["concurrent"]["cross_talk"] == 0
    assert set(report) >= {"url", "options", "single", "concurrent", "p95_over_single_p50"}
