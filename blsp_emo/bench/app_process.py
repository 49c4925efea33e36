"""The app's process for `loadtest --spawn`: started on a free loopback port and timed until it
serves; the memory and CPU of it and its model workers, and the CPU the hypervisor took from the
machine, read from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    startup_s: float
    peak_rss_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample_memory(self, every: float = 0.2, rewalk: float = 1.0) -> None:
        """Keep `peak_rss_mb` up to date: the tree's memory every `every` s, the tree itself (a worker
        that died is replaced by a new process) every `rewalk` s, since walking it costs 50 times more."""

        def loop():
            pids, walked = [], float("-inf")
            while not self._stop.is_set():
                if time.monotonic() - walked >= rewalk:
                    pids, walked = process_tree(self.process.pid), time.monotonic()
                self.peak_rss_mb = max(self.peak_rss_mb, sum(process_rss_mb(pid) for pid in pids))
                time.sleep(every)

        threading.Thread(target=loop, daemon=True).start()

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of the server's process and, together, of its model workers."""
        return {
            "server": process_cpu_s(self.process.pid),
            "workers": sum(process_cpu_s(child) for child in child_pids(self.process.pid)),
        }

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def process_rss_mb(pid: int) -> float:
    """Resident memory of `pid` (0 once it has ended), from /proc's one-line statm."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def process_cpu_s(pid: int) -> float:
    """User and system CPU seconds of `pid` (0 once it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ...
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_stolen_s() -> float:
    """CPU seconds the hypervisor has taken from this machine, all its CPUs together (/proc/stat's
    steal, counted in 10 ms ticks); 0 where nothing counts it (no VM, not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_rss_mb(pid: int) -> float:
    """The resident memory of `pid` and of every process under it (the app's model workers)."""
    return sum(process_rss_mb(p) for p in process_tree(pid))


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it."""
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo.extend(child_pids(current))
    return tree


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started, from the kernel's per-thread lists.

    The memory sampler walks the tree beside the visitors it times, so it reads the few files of
    the app's own threads rather than the status of every process on the machine.
    """
    children = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children.extend(int(child) for child in listing.read_text().split())
        except OSError:  # the thread ended while we looked
            continue
    return children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:g} s")


def spawn_app(args: tuple[str, ...] = (), log: Path | None = None) -> Server:
    """`python app.py` on a free loopback port; `startup_s` runs from process start to HTTP 200 on /."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    out = open(log, "w") if log else subprocess.DEVNULL
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process)
    except Exception:
        process.kill()
        raise
    return Server(process, url, time.monotonic() - start)
