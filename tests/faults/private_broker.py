"""A private RabbitMQ node for the fault tests: its own port, data dir, config and logs.

The machine's shared broker is never touched. A ``PrivateBroker`` runs Debian's ``rabbitmq-server``
as a child process under a unique node name, listening on loopback only; ``stop`` and ``start``
keep the node's data dir, so durable (quorum) queues and their messages survive a restart, as on
a real broker restart.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

#: Where Debian's package puts the real script (``/usr/sbin/rabbitmq-server`` switches user).
_CANDIDATES = (
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/usr/lib/rabbitmq/sbin/rabbitmq-server",
)
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


class BrokerUnavailable(RuntimeError):
    """The private broker cannot be started; the message says what is missing."""


def find_server() -> Path:
    """The ``rabbitmq-server`` start script, or ``BrokerUnavailable`` naming the package.

    ``POLLER_TEST_RABBITMQ_SERVER`` names another start script (an install outside Debian's paths).
    """
    configured = os.environ.get("POLLER_TEST_RABBITMQ_SERVER")
    if configured:
        if not os.access(configured, os.X_OK):
            raise BrokerUnavailable(
                f"POLLER_TEST_RABBITMQ_SERVER={configured} is not an executable rabbitmq-server"
            )
        return Path(configured)
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found is not None and "/usr/sbin/" not in found:
        return Path(found)
    raise BrokerUnavailable(
        "the fault tests need Debian's rabbitmq-server (apt-get install rabbitmq-server): "
        f"none of {', '.join(_CANDIDATES)} exists"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def amqp_answers(port: int, timeout_s: float = 2.0) -> bool:
    """True once the node speaks AMQP on ``port`` (it listens only at the end of its boot)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout_s) as s:
            s.sendall(_AMQP_HEADER)
            s.settimeout(timeout_s)
            frame = s.recv(1)
    except OSError:
        return False
    return frame == b"\x01"  # a method frame: connection.start


class PrivateBroker:
    """One RabbitMQ node under ``root``; ``url`` is its guest AMQP URL on 127.0.0.1."""

    def __init__(
        self,
        root: Path,
        *,
        consumer_timeout_ms: int | None = None,
        channel_tick_ms: int = 1000,
        home: Path | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        """``home`` holds the Erlang cookie (nodes of one cluster share it); ``extra_config`` adds
        lines to ``rabbitmq.conf`` (a TLS listener, say)."""
        self.root = root
        self.server = find_server()
        self.port = free_port()
        self.dist_port = free_port()
        # A unique name on the shared epmd: never the machine's own "rabbit@..." node.
        self.nodename = f"poller-test-{secrets.token_hex(4)}@localhost"
        self.consumer_timeout_ms = consumer_timeout_ms
        self.channel_tick_ms = channel_tick_ms
        self.home = home or root / "home"
        self.extra_config = list(extra_config)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._write_config()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def _write_config(self) -> None:
        for name in ("mnesia", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = info",
            # A small disk and memory footprint must not block publishers on a busy CI machine.
            "disk_free_limit.absolute = 10MB",
        ]
        if self.consumer_timeout_ms is not None:
            lines.append(f"consumer_timeout = {self.consumer_timeout_ms}")
        lines += self.extra_config
        (self.root / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        # The broker checks consumer timeouts on each channel tick (60 s by default): tick often,
        # so that an overdue delivery is caught within a second of its timeout.
        (self.root / "advanced.config").write_text(
            f"[{{rabbit, [{{channel_tick_interval, {self.channel_tick_ms}}}]}}].\n"
        )
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),  # its Erlang cookie
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.root / "rabbitmq.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the node (again, with the same data) and wait until it answers AMQP."""
        assert self.process is None or self.process.poll() is not None, "already running"
        out = (self.log_dir / f"console-{self.starts}.out").open("wb")
        self.process = subprocess.Popen(
            [str(self.server)],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
        )
        out.close()
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerUnavailable(
                    f"rabbitmq-server exited with {self.process.returncode}; "
                    f"see {self.log_dir}:\n{self.console_tail()}"
                )
            if amqp_answers(self.port):
                return
            time.sleep(0.25)
        self.kill()
        raise BrokerUnavailable(f"rabbitmq-server did not answer on {self.port} in {timeout_s} s")

    def rabbitmqctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node; its output, or ``BrokerUnavailable`` saying why."""
        ctl = self.server.parent / "rabbitmqctl"
        try:
            done = subprocess.run(
                [str(ctl), "-n", self.nodename, *args],
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerUnavailable(f"rabbitmqctl {' '.join(args)}: {exc}") from exc
        if done.returncode != 0:
            raise BrokerUnavailable(
                f"rabbitmqctl {' '.join(args)} on {self.nodename} exited with {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done.stdout

    def stop(self, timeout_s: float = 60.0) -> None:
        """Shut the node down cleanly (SIGTERM: the script asks the node to stop)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._wait_port_closed()

    def kill(self) -> None:
        """Kill the node outright, as a crash would."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        self._wait_port_closed()

    def _wait_port_closed(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            except OSError:
                return
            time.sleep(0.2)

    def console_tail(self, lines: int = 30) -> str:
        text = self.log_since({})
        return "\n".join(text.splitlines()[-lines:])

    def log_mark(self) -> dict[Path, int]:
        """Where each log file ends now; ``log_since`` reads what was added after."""
        return {p: p.stat().st_size for p in self._log_files()}

    def log_since(self, mark: dict[Path, int]) -> str:
        """What the node logged after ``mark`` (the node is shared by the tests of a session)."""
        parts = []
        for path in self._log_files():
            with path.open("rb") as f:
                f.seek(mark.get(path, 0))
                parts.append(f.read().decode(errors="replace"))
        return "\n".join(parts)

    def _log_files(self) -> list[Path]:
        return sorted(p for p in self.log_dir.glob("*") if p.is_file())
