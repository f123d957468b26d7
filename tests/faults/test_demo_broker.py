"""`demo` with no broker running: it starts a private RabbitMQ node and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from poller.rabbitmq_node import listening
from tests.faults.private_broker import free_port

pytestmark = pytest.mark.faults

STARTED = re.compile(
    r"^no RabbitMQ on 127\.0\.0\.1:(\d+): starting a private one there .* in (\S+),"
)


def demo_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(POLLER_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{port}/", POLLER_HTTP_PORT="0")
    return env


def start_demo(port: int, *, sigint_ignored: bool = False) -> subprocess.Popen[str]:
    """``sigint_ignored``: as a shell starts a command in the background (`demo &`, nohup)."""
    command = [sys.executable, "-m", "poller", "demo"]
    if sigint_ignored:  # an ignored signal stays ignored across exec
        command = ["sh", "-c", 'trap "" INT && exec "$@"', "sh", *command]
    return subprocess.Popen(
        command,
        env=demo_env(port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def processes_of(root: str) -> list[str]:
    """Processes whose command line or environment names ``root`` (the node, its epmd, …)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            environ = process.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            environ = {}
        words = [*(process.info["cmdline"] or []), *environ.values()]
        if any(root in word for word in words):
            found.append(f"{process.info['pid']}: {' '.join(process.info['cmdline'] or [])}")
    return found


def assert_nothing_left(port: int, root: str) -> None:
    assert not listening("127.0.0.1", port), f"something still listens on {port}"
    assert not Path(root).exists(), f"{root} was not removed"
    assert processes_of(root) == []


def test_demo_on_a_free_local_port_runs_its_own_broker_and_removes_it() -> None:
    """With nothing on its port, `demo` says so in one line, exits 0 and leaves no listener or process."""
    port = free_port()
    demo = start_demo(port)
    try:
        out, err = demo.communicate(timeout=120)
    finally:
        demo.kill()
    lines = out.splitlines()

    assert demo.returncode == 0, out + err
    started = STARTED.match(lines[0])
    assert started is not None, lines[0]
    assert int(started[1]) == port
    assert sum("private one" in line for line in lines) == 1
    assert lines[-1] == "done: success, failure, not_found"
    assert not any(line.startswith("{") for line in out.splitlines() + err.splitlines())
    assert_nothing_left(port, started[2])


@pytest.mark.parametrize(
    ("sig", "running", "in_background"),
    [
        (signal.SIGINT, False, False),
        (signal.SIGINT, True, False),
        (signal.SIGTERM, True, False),
        (signal.SIGTERM, True, True),
    ],
    ids=["ctrl-c-while-booting", "ctrl-c", "sigterm", "sigterm-in-background"],
)
def test_demo_interrupted_stops_and_removes_its_broker(
    sig: signal.Signals, running: bool, in_background: bool
) -> None:
    """Ctrl-C (or SIGTERM) while the node boots or the demo runs: the node goes, and its directory.

    Started in the background, where a shell has every command ignore Ctrl-C, SIGTERM must still
    stop it.
    """
    port = free_port()
    demo = start_demo(port, sigint_ignored=in_background)
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        started = STARTED.match(first)
        assert started is not None, first
        if running:
            # The next line comes once the node answers and the demo's worker is about to start.
            assert demo.stdout.readline().startswith("simulated cluster")
        demo.send_signal(sig)
        began = time.monotonic()
        demo.communicate(timeout=60)
        stopped_in_s = time.monotonic() - began
    finally:
        demo.kill()
        demo.communicate()  # reaped, its pipes closed, even when it did not stop in time

    assert demo.returncode == 130
    assert stopped_in_s < 30
    assert_nothing_left(port, started[2])
