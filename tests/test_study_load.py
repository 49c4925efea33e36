"""50 simulated raters through a real `python app.py` server, a SIGKILL in the middle, and the report.

The server is a subprocess on loopback with the tiny bundle; raters talk to it only through
gradio_client, as `python -m blsp_emo study loadtest` does. The checks read the database itself.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from blsp_emo.bench.study_load import run_load
from blsp_emo.study import StudyConfig, StudyStore, balance
from study_fixtures import SYSTEMS, write_study

pytest.importorskip("gradio_client")
pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.load]  # `python app.py` in a subprocess, 50 raters

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "load-test-admin-token"
RATERS = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py` with the tiny bundle and a short study; start, SIGKILL, start again."""

    def __init__(self, bundle: Path, study: Path, db: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cmd = [
            sys.executable,
            "app.py",
            "--model",
            str(bundle),
            "--systems",
            ",".join(SYSTEMS),
            "--tts",
            "none",
            "--study",
            str(study),
            "--study-db",
            str(db),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "BLSP_EMO_ADMIN_TOKEN": TOKEN}
        self.log, self.proc = log, None

    def start(self, timeout: float = 180) -> None:
        self.proc = subprocess.Popen(
            self.cmd, cwd=ROOT, env=self.env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-2000:]}"
            try:
                urllib.request.urlopen(self.url + "gradio_api/info", timeout=2).read()
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"server not up in {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # no shutdown handlers, no flush: a crash
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def setup(bundle_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    study = write_study(root / "study", trials=2)
    server = Server(bundle_dir, study, root / "ratings.sqlite", root / "server.log")
    server.start()
    yield server, StudyConfig.load(study), root
    server.stop()


def _check_acknowledged(db: Path, acknowledged: set[str]) -> dict[str, int]:
    rows = StudyStore(db).key_counts()
    missing = sorted(acknowledged - set(rows))
    assert missing == [], f"acknowledged but not stored: {missing[:5]}"
    assert all(n == 1 for n in rows.values())
    return rows


def test_50_raters_at_once_each_rating_stored_exactly_once_and_balanced(setup):
    server, config, root = setup
    acked = set()
    result = run_load(server.url, RATERS, TOKEN, timeout_s=240, seed=1, on_ack=acked.add)
    print("loadtest:", json.dumps({k: v for k, v in result.items() if k != "assignment"}))
    print("assignment:", json.dumps(result["assignment"]))
    assert result["error_count"] == 0, result["errors"]
    assert result["finished"] == RATERS and result["submitted"] == RATERS * config.trials_per_rater
    assert result["acknowledged"] == result["stored"] == RATERS * config.trials_per_rater
    assert result["lost"] == [] and result["stored_more_than_once"] == []
    assert result["duplicates"] == RATERS  # every double-clicked first trial answered 'duplicate'
    rows = _check_acknowledged(root / "ratings.sqlite", acked)
    assert len(rows) == RATERS * config.trials_per_rater
    summary = balance(StudyStore(root / "ratings.sqlite").assignment_counts(config.id), config)
    assert summary["spread"] <= 1 and summary["min"] >= RATERS * config.trials_per_rater // 6


def test_sigkill_mid_load_then_restart_loses_no_acknowledged_rating(setup):
    server, config, root = setup
    db = root / "ratings.sqlite"
    before = len(StudyStore(db).key_counts())
    acked, lock, enough = set(), threading.Lock(), threading.Event()

    def on_ack(key):
        with lock:
            acked.add(key)
            if len(acked) >= 20:
                enough.set()

    outcome = {}
    load = threading.Thread(
        target=lambda: outcome.update(run_load(server.url, RATERS, TOKEN, timeout_s=300, seed=2, on_ack=on_ack))
    )
    load.start()
    assert enough.wait(180), "no ratings acknowledged before the kill"
    server.kill()
    with lock:
        acked_at_kill = set(acked)
    _check_acknowledged(db, acked_at_kill)  # on disk already, before any restart
    server.start()
    load.join(360)
    assert not load.is_alive()
    result = outcome
    print("after restart:", json.dumps({k: v for k, v in result.items() if k != "assignment"}))
    assert sum(result["retries"].values()) > 0  # the kill was felt
    assert result["error_count"] == 0 and result["finished"] == RATERS, result["errors"]
    rows = _check_acknowledged(db, acked)
    assert result["lost"] == [] and len(rows) - before == RATERS * config.trials_per_rater


def test_report_on_the_load_test_ratings_writes_tables_and_plots(setup):
    server, config, root = setup
    out = root / "report"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "blsp_emo",
            "study",
            "report",
            "--db",
            str(root / "ratings.sqlite"),
            "--out",
            str(out),
            "--config",
            str(config.path),
            "--bootstrap",
            "200",
        ],
        cwd=ROOT,
        env={**os.environ, "BLSP_EMO_ADMIN_TOKEN": TOKEN},  # the report, like the export, is for the admin
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ratings"] >= RATERS * config.trials_per_rater
    assert {r["system"] for r in summary["scores"]} == set(SYSTEMS)
    assert len(summary["pairwise"]) == 3 and summary["assignment"]["spread"] <= 1
    for name in (
        "scores.csv",
        "pairwise.csv",
        "bradley_terry.csv",
        "report.md",
        "scores.png",
        "bradley_terry.png",
        "preferences.png",
    ):
        assert (out / name).stat().st_size > 100, name
    assert "Bradley–Terry" in run.stdout
