"""A private RabbitMQ node for the fault tests: ``poller.rabbitmq_node.RabbitNode``, tuned.

The machine's shared broker is never touched: the node has its own name, port, epmd, cookie, data
dir, config and logs, as the demo's does. The fault tests add a consumer timeout, a fast channel
tick, extra configuration (a TLS listener), ``rabbitmqctl`` and a reading of the node's log. Nodes
of one private cluster share a cookie (``home``) and an epmd (``epmd``), as a cluster must.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from poller.rabbitmq_node import EmbeddedBrokerError, RabbitNode, find_server, free_port

#: The private broker cannot be started; the message says what is missing.
BrokerUnavailable = EmbeddedBrokerError

__all__ = ["BrokerUnavailable", "PrivateBroker", "free_port"]


class PrivateBroker(RabbitNode):
    """One RabbitMQ node under ``root``; ``url`` is its guest AMQP URL on 127.0.0.1.

    ``POLLER_TEST_RABBITMQ_SERVER`` names another start script (an install outside the usual
    places). ``home`` holds the Erlang cookie (the nodes of one cluster share it); ``epmd`` is the
    port of an epmd that another node of the cluster started (this node then starts none);
    ``extra_config`` adds lines to ``rabbitmq.conf``.
    """

    def __init__(
        self,
        root: Path,
        *,
        consumer_timeout_ms: int | None = None,
        channel_tick_ms: int = 1000,
        home: Path | None = None,
        epmd: int | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        config = []
        if consumer_timeout_ms is not None:
            config.append(f"consumer_timeout = {consumer_timeout_ms}")
        config += extra_config
        super().__init__(
            root,
            server=find_server(os.environ.get("POLLER_TEST_RABBITMQ_SERVER")),
            name_prefix="poller-test",
            config_lines=config,
            # The broker checks consumer timeouts on each channel tick (60 s by default): tick
            # often, so that an overdue delivery is caught within a second of its timeout.
            advanced_config=f"[{{rabbit, [{{channel_tick_interval, {channel_tick_ms}}}]}}].\n",
        )
        self.home = home
        self._shared_epmd = epmd is not None
        if epmd is not None:
            self.epmd_port = epmd

    def _env(self) -> dict[str, str]:
        env = super()._env()
        if self.home is not None:
            env["HOME"] = str(self.home)  # the cookie the nodes of one cluster share
        return env

    def start_epmd(self) -> None:
        """Start this node's epmd now (a cluster's first node, before the others boot)."""
        super()._start_epmd()

    def _start_epmd(self, timeout_s: float = 10.0) -> None:
        if not self._shared_epmd:  # a cluster's epmd is started by its first node
            super()._start_epmd(timeout_s)

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
