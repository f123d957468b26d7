"""Processes of a benchmark run: the simulator, the worker, the peer and the relay, each measured
on its own.

Every measured program runs in a process of its own, so that its CPU seconds and its peak resident
set size are its own and nothing else's (the simulator and the benchmark driver never count).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import httpx
import psutil

from bench.amqp import CLUSTER

T = TypeVar("T")
SIM_USER = "admin"
SIM_PASSWORD = "netapp1!"
PYTHON = sys.executable
#: ONTAP purges a finished job this long after it ends (the simulator's default too).
PURGE_AFTER_S = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Usage:
    """What one process used between two readings."""

    cpu_s: float
    peak_rss_bytes: int


class Meter:
    """CPU seconds and peak RSS of one process, read from the kernel through psutil."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self._cpu_at_start = 0.0
        self._peak_rss = 0

    def start(self) -> None:
        self._cpu_at_start = self._cpu()
        self.sample()

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self._peak_rss = max(self._peak_rss, self.process.memory_info().rss)

    def read(self) -> Usage:
        """CPU since ``start``; peak RSS over the process's whole life (VmHWM) where Linux has it."""
        self.sample()
        return Usage(self._cpu() - self._cpu_at_start, max(self._peak_rss, self._high_water()))

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def _high_water(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status")
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0


class Child:
    """A subprocess whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log_path: Path, **popen: object) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, **popen)
        self.meter = Meter(self.proc.pid)

    def measure_the_spied(self) -> None:
        """Under py-spy: measure the recorded program, not py-spy."""
        self.meter = Meter(psutil.Process(self.proc.pid).children()[0].pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM to the measured process (under py-spy, the worker: py-spy then writes its
        profile and exits with it); SIGKILL to all after ``timeout_s``."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.meter.process.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(psutil.Error):
                    self.meter.process.kill()
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()
        return self.proc.returncode


def broker_meter(amqp_url: str) -> Meter | None:
    """The broker's CPU, when it runs on this machine (it shares the cores with the worker)."""
    port = urlsplit(amqp_url).port or 5672
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                return Meter(conn.pid)
    return None


def start_simulator(
    workdir: Path, *, clock_offset_s: float = 0.0, purge_after_s: float = PURGE_AFTER_S
) -> tuple[Child, str]:
    """``python -m poller simulate``; ``clock_offset_s`` < 0: the cluster's clock runs behind."""
    port = free_port()
    argv = [PYTHON, "-m", "poller", "simulate", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--username", SIM_USER, "--password", SIM_PASSWORD]
    argv += ["--purge-after", str(purge_after_s), "--clock-offset", str(clock_offset_s)]
    child = Child("simulator", argv, workdir / "simulator.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/_sim/stats", child)
    return child, url


def wait_http(url: str, child: Child, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        child.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{child.name}: {url} did not answer 200 within {timeout_s} s")


def worker_config(
    path: Path,
    *,
    amqp_url: str,
    names: dict[str, str],
    sim_url: str,
    batch: bool,
    feed: bool = True,
    discover: bool = False,
    http_port: int,
    poll_interval_min_s: float,
    poll_interval_max_s: float,
    max_watches: int,
) -> Path:
    """The worker's TOML configuration, as an operator would write it."""
    path.write_text(
        f'amqp_url = "{amqp_url}"\n'
        f'watch_queue = "{names["watch_queue"]}"\n'
        f'dead_letter_queue = "{names["dead_letter_queue"]}"\n'
        f'events_exchange = "{names["events_exchange"]}"\n'
        f"poll_interval_min = {poll_interval_min_s}\n"
        f"poll_interval_max = {poll_interval_max_s}\n"
        f"max_watches = {max_watches}\n"
        f"http_port = {http_port}\n"
        'log_format = "json"\n'
        f"\n[clusters.{CLUSTER}]\n"
        f'url = "{sim_url}"\n'
        f'username = "{SIM_USER}"\n'
        f'password = "{SIM_PASSWORD}"\n'
        f"batch = {_toml(batch)}\n"
        f"feed = {_toml(feed)}\n"
        f"discover = {_toml(discover)}\n"
    )
    return path


def _toml(value: bool) -> str:
    return "true" if value else "false"


def start_worker(config: Path, http_port: int, log_path: Path, *, profile: Path | None) -> Child:
    """``python -m poller run`` (under py-spy when profiling); returns once /readyz answers 200."""
    argv = spied([PYTHON, "-m", "poller", "run", "--config", str(config)], profile)
    # Only the file configures it: a stray POLLER_* variable would override the benchmark's values.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env["POLLER_CONFIG"] = str(config)
    child = Child("worker", argv, log_path, env=env)
    wait_http(f"http://127.0.0.1:{http_port}/readyz", child)
    if profile is not None:
        child.measure_the_spied()
    return child


def spied(argv: list[str], profile: Path | None) -> list[str]:
    """``argv`` recorded by py-spy into ``profile`` (speedscope JSON); as it is without one."""
    if profile is None:
        return argv
    spy = Path(PYTHON).with_name("py-spy")
    record = ["record", "--rate", "100", "--format", "speedscope", "--output", str(profile)]
    return [str(spy), *record, "--", *argv]


def scrape_metrics(http_port: int) -> dict[str, float]:
    """The worker's /metrics as {"name{labels}": value} (comments left out)."""
    text = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=5.0).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def metric_sum(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in values.items():
        base = key.split("{", 1)[0]
        if base != name:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


async def until_sigterm(run: Coroutine[Any, Any, T]) -> T:
    """SIGTERM cancels ``run`` as Ctrl-C does: its processes are stopped, its queues deleted."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
