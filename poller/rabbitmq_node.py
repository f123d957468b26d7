"""A private RabbitMQ node in a directory of its own, isolated from any other broker here.

``RabbitNode`` runs ``rabbitmq-server`` as a child process with its own node name, its own epmd
(``ERL_EPMD_PORT``), its own Erlang cookie (``HOME``), mnesia and log dirs and configuration
files, all under one directory, and a listener on loopback only. The machine's own broker, if any,
is never touched. The ``demo`` command runs one through ``poller.embedded_broker``; the fault tests
run theirs with settings of their own.

Errors (part of the tree in ``poller.errors``)::

    PollerError
    └── EmbeddedBrokerError    no private node could be had; ``str()`` is one line
        └── RabbitMQNotInstalled  no ``rabbitmq-server``; the line says how to install it
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

from poller.errors import PollerError

#: Where Debian's package puts the real start script: the ``/usr/sbin`` one switches to the
#: ``rabbitmq`` user (and to its HOME, and so to the machine broker's cookie) when run as root.
DEBIAN_SCRIPTS: tuple[str, ...] = (
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "/usr/lib/rabbitmq/sbin/rabbitmq-server",
)
_DEBIAN_WRAPPER: Final = "rabbitmq-script-wrapper"
_AMQP_HEADER: Final = b"AMQP\x00\x00\x09\x01"
#: ``(command on PATH, its install command)``: the first package manager found wins.
_INSTALLERS: Final = (
    ("apt-get", "apt-get install rabbitmq-server"),
    ("dnf", "dnf install rabbitmq-server"),
    ("yum", "yum install rabbitmq-server"),
    ("zypper", "zypper install rabbitmq-server"),
    ("apk", "apk add rabbitmq-server"),
    ("brew", "brew install rabbitmq"),
)


class EmbeddedBrokerError(PollerError):
    """A private RabbitMQ node could not be started. ``str()`` is one line."""


class RabbitMQNotInstalled(EmbeddedBrokerError):
    """No ``rabbitmq-server`` on this machine; ``str()`` names the command that installs it."""


def install_command(
    which: Callable[[str], str | None] = shutil.which, root: bool | None = None
) -> str:
    """The command that installs RabbitMQ here, by the package manager this machine has."""
    if root is None:
        root = os.geteuid() == 0
    for tool, command in _INSTALLERS:
        if which(tool) is not None:
            return command if root or tool == "brew" else f"sudo {command}"
    return "see https://www.rabbitmq.com/docs/download"


def find_server(configured: str | None = None) -> Path:
    """The ``rabbitmq-server`` start script to run; ``RabbitMQNotInstalled`` when there is none.

    ``configured`` names one explicitly. Otherwise ``PATH`` is searched, Debian's wrapper being
    replaced by the real script beside it, and then Debian's own place (``/usr/sbin`` is not on
    the ``PATH`` of most users).
    """
    if configured:
        if not os.access(configured, os.X_OK):
            raise EmbeddedBrokerError(f"{configured} is not an executable rabbitmq-server")
        return Path(configured)
    found = shutil.which("rabbitmq-server")
    if found is not None and Path(found).resolve().name != _DEBIAN_WRAPPER:
        return Path(found)
    for candidate in DEBIAN_SCRIPTS:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise RabbitMQNotInstalled(
        f"RabbitMQ is not installed (no rabbitmq-server); install it with: {install_command()}"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (any of its addresses)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(timeout_s)
            if s.connect_ex(address) == 0:
                return True
    return False


def amqp_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True once a node speaks AMQP at ``host:port`` (RabbitMQ listens only at the end of its boot)."""
    try:
        with socket.create_connection((host, port), timeout_s) as s:
            s.sendall(_AMQP_HEADER)
            s.settimeout(timeout_s)
            frame = s.recv(1)
    except OSError:
        return False
    return frame == b"\x01"  # a method frame: connection.start


@dataclass(frozen=True, slots=True)
class Target:
    """Where a private node must listen, and the account the broker URL logs in with."""

    host: str
    port: int
    user: str = "guest"
    password: str = "guest"  # noqa: S105 - RabbitMQ's default account, loopback only
    vhost: str = "/"


class RabbitNode:
    """One RabbitMQ node under ``root``, listening at ``target`` (loopback) only.

    ``stop`` and ``start`` keep the node's data, as a broker restart would; ``kill`` is a crash.
    ``close`` stops the node and its epmd for good (the directory is the caller's to remove).
    """

    def __init__(
        self,
        root: Path,
        *,
        target: Target | None = None,
        server: Path | None = None,
        name_prefix: str = "ontap-job-poller",
        config_lines: Sequence[str] = (),
        advanced_config: str = "[].\n",
    ) -> None:
        self.root = root
        self.server = server or find_server()
        self.target = target or Target("127.0.0.1", free_port())
        self.dist_port = free_port()
        self.epmd_port = free_port()
        # Unique, so that even a shared epmd could never confuse it with the machine's "rabbit@...".
        self.nodename = f"{name_prefix}-{secrets.token_hex(4)}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        #: Whether the node answered AMQP since it was last started: a node still booting is
        #: killed rather than asked to stop (its start script may not listen to SIGTERM yet).
        self.booted = False
        self.starts = 0
        self._write_config(config_lines, advanced_config)

    @property
    def port(self) -> int:
        return self.target.port

    @property
    def url(self) -> str:
        """The node's AMQP URL, with the account it was given."""
        t = self.target
        host = f"[{t.host}]" if ":" in t.host else t.host
        vhost = "" if t.vhost == "/" else quote(t.vhost, safe="")
        return (
            f"amqp://{quote(t.user, safe='')}:{quote(t.password, safe='')}@{host}:{t.port}/{vhost}"
        )

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def _write_config(self, extra: Sequence[str], advanced: str) -> None:
        for name in ("home", "mnesia", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        t = self.target
        for value in (t.user, t.password, t.vhost):
            if "\n" in value or value != value.strip():
                raise EmbeddedBrokerError(
                    "the broker URL's user, password or vhost cannot be written to rabbitmq.conf"
                )
        lines = [
            f"listeners.tcp.default = {t.host}:{t.port}",
            "loopback_users.guest = true",
            f"default_user = {t.user}",
            f"default_pass = {t.password}",
            f"default_vhost = {t.vhost}",
            "log.console = false",
            "log.file.level = info",
            # A small disk and memory footprint must not block publishers on a busy machine.
            "disk_free_limit.absolute = 10MB",
            *extra,
        ]
        (self.root / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.root / "advanced.config").write_text(advanced)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.root / "home"),  # its own Erlang cookie
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.target.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.root / "rabbitmq.pid"),
            # Erlang distribution (CLI tools, clustering) on IPv4 loopback, whatever AMQP listens on.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / log_name).open("wb") as out:
            return subprocess.Popen(  # noqa: S603 - a start script found on this machine
                argv,
                env=self._env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group, killed as one, and out of reach of the terminal's Ctrl-C:
                # the caller decides when the node stops.
                start_new_session=True,
            )

    def _start_epmd(self, timeout_s: float = 10.0) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        epmd = shutil.which("epmd") or str(self.server.parent / "epmd")
        if not os.access(epmd, os.X_OK):
            raise EmbeddedBrokerError("epmd (part of Erlang) was not found on PATH")
        # In the foreground, as a child of ours: the node's own ``epmd -daemon`` would outlive it.
        with _interrupts_deferred():
            self._epmd = self._spawn(
                [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"], "epmd.out"
            )
        deadline = time.monotonic() + timeout_s
        while not listening("127.0.0.1", self.epmd_port, 0.5):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise EmbeddedBrokerError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the node (again, with the same data) and wait until it answers AMQP."""
        if self.process is not None and self.process.poll() is None:
            raise EmbeddedBrokerError("the node is already running")
        self._start_epmd()
        with _interrupts_deferred():
            self.process = self._spawn([str(self.server)], f"console-{self.starts}.out")
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedBrokerError(
                    f"rabbitmq-server exited with {self.process.returncode}: "
                    + " | ".join(self.console_tail(5).splitlines())
                )
            if amqp_answers(self.target.host, self.port):
                self.booted = True
                return
            time.sleep(0.25)
        self.kill()
        raise EmbeddedBrokerError(f"rabbitmq-server did not answer on {self.port} in {timeout_s} s")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Shut the node down cleanly (SIGTERM: the script asks the node to stop)."""
        process = self.process
        self.booted = False
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._wait_port_closed()

    def kill(self) -> None:
        """Kill the node outright, as a crash would (its epmd stays, as the machine's would)."""
        self.booted = False
        if self.process is not None:
            _kill_group(self.process)
        self._wait_port_closed()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the node (killing it after ``timeout_s``, or at once while it boots) and its epmd.

        Nothing of the node runs afterwards.
        """
        try:
            if self.booted:
                self.stop(timeout_s)
        finally:
            if self.process is not None:
                _kill_group(self.process)  # whatever of the node's group is left
            if self._epmd is not None:
                _kill_group(self._epmd)

    def _wait_port_closed(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and listening(self.target.host, self.port, 0.5):
            time.sleep(0.2)

    def console_tail(self, lines: int = 30) -> str:
        """The end of what the start script printed last (its boot errors, for one)."""
        path = self.log_dir / f"console-{max(self.starts - 1, 0)}.out"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(30)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the end of the block, then take effect.

    A child started in the block is known to ``close`` only once it is assigned: interrupted in
    between, it would outlive the demo. Handlers that record (not ``SIG_IGN``, which children
    would inherit) keep the children's own signals as they are.
    """
    if not in_main_thread():
        yield
        return
    caught: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in watched
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def in_main_thread() -> bool:
    """Signal handlers can be set only there."""
    return threading.current_thread() is threading.main_thread()
