"""A private RabbitMQ node for the fault tests: ``poller.rabbitmq_node.RabbitNode``, tuned.

The machine's shared broker is never touched: the node has its own name, port, epmd, cookie, data
dir, config and logs, as the demo's does. The fault tests add a consumer timeout, a fast channel
tick and a reading of the node's log.
"""

from __future__ import annotations

import os
from pathlib import Path

from poller.rabbitmq_node import EmbeddedBrokerError, RabbitNode, find_server, free_port

#: The private broker cannot be started; the message says what is missing.
BrokerUnavailable = EmbeddedBrokerError

__all__ = ["BrokerUnavailable", "PrivateBroker", "free_port"]


class PrivateBroker(RabbitNode):
    """One RabbitMQ node under ``root``; ``url`` is its guest AMQP URL on 127.0.0.1.

    ``POLLER_TEST_RABBITMQ_SERVER`` names another start script (an install outside the usual
    places).
    """

    def __init__(
        self,
        root: Path,
        *,
        consumer_timeout_ms: int | None = None,
        channel_tick_ms: int = 1000,
    ) -> None:
        config = []
        if consumer_timeout_ms is not None:
            config.append(f"consumer_timeout = {consumer_timeout_ms}")
        super().__init__(
            root,
            server=find_server(os.environ.get("POLLER_TEST_RABBITMQ_SERVER")),
            name_prefix="poller-test",
            config_lines=config,
            # The broker checks consumer timeouts on each channel tick (60 s by default): tick
            # often, so that an overdue delivery is caught within a second of its timeout.
            advanced_config=f"[{{rabbit, [{{channel_tick_interval, {channel_tick_ms}}}]}}].\n",
        )

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
