"""The demo's own broker: when to start a private RabbitMQ node, and its end on every way out.

``private_broker`` starts a ``poller.rabbitmq_node.RabbitNode`` only when the broker URL is this
machine (``localhost``, ``127.0.0.1``, ``::1``, plain ``amqp://``) and nothing listens there. It
says so in one line, and stops the node and removes its directory when the block ends, however it
ends: an exception, Ctrl-C, SIGTERM. ``run`` never uses it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import unquote, urlsplit

from poller.rabbitmq_node import (
    EmbeddedBrokerError,
    RabbitMQNotInstalled,
    RabbitNode,
    Target,
    find_server,
    in_main_thread,
    listening,
)

LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def local_target(url: str) -> Target | None:
    """The node an ``amqp://`` URL on this machine asks for; None for any other broker URL."""
    parts = urlsplit(url)
    if parts.scheme != "amqp" or parts.hostname not in LOCAL_HOSTS:
        return None
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return Target(
        host="::1" if parts.hostname == "::1" else "127.0.0.1",
        port=parts.port or 5672,
        user=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password else "guest",
        vhost=unquote(path) if path else "/",
    )


def wanted_node(urls: str | Sequence[str]) -> Target | None:
    """The node ``demo`` should start: every broker URL is this machine and none answers."""
    listed = [urls] if isinstance(urls, str) else list(urls)
    targets = [local_target(url) for url in listed]
    if not targets or any(t is None for t in targets):
        return None
    if any(listening(t.host, t.port) for t in targets if t is not None):
        return None
    return targets[0]


@contextlib.contextmanager
def private_broker(urls: str | Sequence[str], out: TextIO) -> Iterator[RabbitNode | None]:
    """A private node for the ``demo`` while the block runs, when the broker URL wants one.

    None when the broker is elsewhere or already listens. Otherwise one line on ``out`` says a
    node is started; it is stopped and its directory removed when the block ends, however it ends
    (an exception, Ctrl-C, SIGTERM). ``RabbitMQNotInstalled`` when there is no ``rabbitmq-server``.
    """
    target = wanted_node(urls)
    if target is None:
        yield None
        return
    server = find_server()
    root = Path(tempfile.mkdtemp(prefix="ontap-job-poller-rabbitmq-"))
    try:
        node = RabbitNode(root, target=target, server=server, name_prefix="ontap-job-poller-demo")
        where = f"[{target.host}]" if ":" in target.host else target.host
        print(
            f"no RabbitMQ on {where}:{target.port}: starting a private one there "
            f"({server.name} in {root}, removed on exit)",
            file=out,
            flush=True,
        )
        with _sigterm_as_sigint():
            try:
                node.start()
                yield node
            finally:
                with _sigint_ignored():
                    node.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM takes Ctrl-C's way out (asyncio cancels, ``finally`` blocks run), not a hard exit.

    A shell starts a command in the background (`demo &`, nohup) with SIGINT ignored, and asyncio
    then leaves Ctrl-C alone: SIGTERM, turned into SIGINT, would stop nothing. So SIGINT is handled
    here in any case; the demo is stopped by either.
    """
    if not in_main_thread():
        yield
        return
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the clean-up short: the node would outlive the demo."""
    if not in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = [
    "EmbeddedBrokerError",
    "RabbitMQNotInstalled",
    "local_target",
    "private_broker",
    "wanted_node",
]
