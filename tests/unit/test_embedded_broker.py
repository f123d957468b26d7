"""When the demo starts a private RabbitMQ node, which start script it runs, what it tells users."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest

from poller import rabbitmq_node
from poller.embedded_broker import local_target, wanted_node
from poller.rabbitmq_node import (
    RabbitMQNotInstalled,
    Target,
    find_server,
    free_port,
    install_command,
    listening,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@localhost:5672/", Target("127.0.0.1", 5672)),
        ("amqp://guest:guest@127.0.0.1:5700/", Target("127.0.0.1", 5700)),
        ("amqp://guest:guest@[::1]:5701/", Target("::1", 5701)),
        ("amqp://localhost", Target("127.0.0.1", 5672)),
        (
            "amqp://poller:s%40cret@localhost/ontap",
            Target("127.0.0.1", 5672, "poller", "s@cret", "ontap"),
        ),
        ("amqp://guest:guest@rabbitmq.example.com:5672/", None),
        ("amqp://guest:guest@10.0.0.5:5672/", None),
        ("amqps://guest:guest@localhost:5671/", None),  # TLS: a private node would not speak it
    ],
)
def test_local_target_only_for_plain_amqp_on_this_machine(
    url: str, expected: Target | None
) -> None:
    """Only an amqp:// URL on localhost, 127.0.0.1 or ::1 asks for a node, with its account."""
    assert local_target(url) == expected


def test_wanted_node_only_when_nothing_listens() -> None:
    """A local port that answers is left alone; a free one gets a node; one remote URL is enough to say no."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        assert wanted_node(f"amqp://guest:guest@127.0.0.1:{taken}/") is None
    free = free_port()
    assert wanted_node(f"amqp://guest:guest@localhost:{free}/") == Target("127.0.0.1", free)
    assert wanted_node([f"amqp://127.0.0.1:{free}/", "amqp://rabbit2.example.com/"]) is None


@pytest.mark.parametrize(
    ("tools", "root", "expected"),
    [
        ({"apt-get", "brew"}, True, "apt-get install rabbitmq-server"),
        ({"apt-get"}, False, "sudo apt-get install rabbitmq-server"),
        ({"dnf", "yum"}, False, "sudo dnf install rabbitmq-server"),
        ({"brew"}, False, "brew install rabbitmq"),
        (set(), False, "see https://www.rabbitmq.com/docs/download"),
    ],
)
def test_install_command_follows_the_package_manager(
    tools: set[str], root: bool, expected: str
) -> None:
    """The hint names this machine's package manager, with sudo unless already root."""

    def which(tool: str) -> str | None:
        return f"/usr/bin/{tool}" if tool in tools else None

    assert install_command(which, root=root) == expected


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_find_server_prefers_path_but_skips_debians_user_switching_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real script on PATH is used; Debian's wrapper on PATH is replaced by the script it runs."""
    real = _executable(tmp_path / "lib" / "rabbitmq-server")
    monkeypatch.setattr(rabbitmq_node, "DEBIAN_SCRIPTS", (str(real),))

    own = _executable(tmp_path / "own" / "rabbitmq-server")
    monkeypatch.setenv("PATH", str(own.parent))
    assert find_server() == own

    wrapper = _executable(tmp_path / "lib" / "rabbitmq-script-wrapper")
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    (sbin / "rabbitmq-server").symlink_to(wrapper)
    monkeypatch.setenv("PATH", str(sbin))
    assert find_server() == real

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_server() == real  # /usr/sbin is not on most users' PATH


def test_find_server_without_rabbitmq_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No script anywhere: the error says how to install RabbitMQ."""
    monkeypatch.setattr(rabbitmq_node, "DEBIAN_SCRIPTS", ())
    _executable(tmp_path / "bin" / "apt-get")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(RabbitMQNotInstalled, match=r"apt-get install rabbitmq-server"):
        find_server()


def test_demo_without_rabbitmq_server_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    """`demo` with nothing on its local port and no rabbitmq-server: one line, exit 1, no retries."""
    _executable(tmp_path / "bin" / "apt-get")  # found by the hint, never run
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        PATH=str(tmp_path / "bin"),
        POLLER_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        POLLER_HTTP_PORT="0",
        POLLER_LOG_FORMAT="json",
    )
    # The machine may have Debian's package: its place is hidden, as on a machine without it.
    code = (
        "import sys; from poller import rabbitmq_node, cli; "
        "rabbitmq_node.DEBIAN_SCRIPTS = (); sys.exit(cli.main(['demo']))"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert time.monotonic() - started < 15  # no waiting for a broker that will never come
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "apt-get install rabbitmq-server" in lines[0]
    assert lines[0].startswith("ontap-job-poller: demo: ")
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_run_never_starts_a_broker_of_its_own() -> None:
    """`run` with nothing on its local broker port waits for RabbitMQ; it starts no node there."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
    env.update(
        POLLER_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{port}/",
        POLLER_HTTP_PORT="0",
        POLLER_LOG_FORMAT="json",
        POLLER_ONTAP_URL="http://127.0.0.1:9",
        POLLER_ONTAP_USERNAME="admin",
        POLLER_ONTAP_PASSWORD="unused",
    )
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "poller", "run"], env=env, stdout=out, stderr=err, text=True
        )
        try:
            # Past its first attempt to connect (the demo would have started a node by then),
            # however long a loaded machine takes to start the process.
            deadline = time.monotonic() + 30
            while "broker.connect_retrying" not in read(err) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not listening("127.0.0.1", port)
        finally:
            worker.kill()
            worker.wait(timeout=30)
        said, logged = read(out), read(err)
    assert "private" not in said + logged
    assert "broker.connect_retrying" in logged  # waiting for a broker, as documented


def read(stream: IO[str]) -> str:
    stream.seek(0)
    return stream.read()
