"""Where RabbitMQ is: the nodes of one cluster, TLS, the password, and a connection that fails over.

``BrokerTarget`` gathers what ``amqp_url``, ``amqp_ca_file``, ``amqp_cert_file``, ``amqp_key_file``
and ``amqp_password_file`` say. ``NodeConnection`` is aio-pika's robust connection over a list of
nodes instead of one URL: each time the connection in use is lost, or an attempt to reach a node
fails, the next attempt goes to the next node of the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import aio_pika
import structlog
from yarl import URL

#: Seconds between heartbeats (unless a URL sets ``?heartbeat=``). A node whose host vanishes
#: without closing the socket is given up after three missed ones (about 18 s); a node that crashes
#: on a live host (SIGKILL, OOM) closes its sockets and is noticed at once.
HEARTBEAT_S: Final = 5
#: How long one attempt to reach one node may take (TCP, TLS, AMQP handshake).
CONNECT_TIMEOUT_S: Final = 10.0
#: Pause after losing the node in use, and once every node of the list has failed in turn
#: (randomised by ±50 %, so that many clients do not come back in step); between the nodes of one
#: round there is none.
PAUSE_S: Final = 2.0
REDACTED: Final = "[redacted]"
log = structlog.get_logger(__name__)


class AmqpConfig(Protocol):
    """What ``poller.config.Settings`` (or any object with these attributes) says about the broker."""

    @property
    def amqp_url(self) -> str | Sequence[str]: ...
    @property
    def amqp_ca_file(self) -> Path | None: ...
    @property
    def amqp_cert_file(self) -> Path | None: ...
    @property
    def amqp_key_file(self) -> Path | None: ...
    @property
    def amqp_password_file(self) -> Path | None: ...


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    """The nodes of one RabbitMQ cluster (or a single broker), and how to reach them.

    ``urls`` are tried in order; ``ca_file`` (PEM bundle; the system's CAs when unset) and the
    optional client ``cert_file``/``key_file`` apply to ``amqps://`` nodes; ``password_file`` holds
    the password of every URL (a trailing newline ignored), replacing any inside the URLs.
    """

    urls: tuple[str, ...]
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    password_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("no RabbitMQ URL given")

    def __repr__(self) -> str:
        return f"BrokerTarget(nodes={list(self.nodes())!r})"

    @classmethod
    def of(cls, target: Target) -> BrokerTarget:
        """From a URL, a list of URLs (or one comma-separated string), or settings."""
        if isinstance(target, BrokerTarget):
            return target
        if isinstance(target, str | URL):
            return cls(urls=split_urls(str(target)))
        if isinstance(target, Sequence):
            return cls(urls=tuple(str(url) for url in target))
        return cls(
            urls=split_urls(target.amqp_url)
            if isinstance(target.amqp_url, str)
            else tuple(target.amqp_url),
            ca_file=target.amqp_ca_file,
            cert_file=target.amqp_cert_file,
            key_file=target.amqp_key_file,
            password_file=target.amqp_password_file,
        )

    def nodes(self) -> tuple[str, ...]:
        """The URLs as they may be shown: without user or password."""
        return tuple(display(url) for url in self.urls)

    def resolve(self) -> tuple[list[URL], ssl.SSLContext | None, list[str]]:
        """The URLs to connect to, the TLS context (when a node is ``amqps://``), and the secrets.

        The secrets are every password involved, so that error messages can be scrubbed of them.
        Raises ``OSError`` when ``password_file`` or a TLS file cannot be read.
        """
        password = read_password(self.password_file) if self.password_file else None
        urls = []
        for text in self.urls:
            url = URL(text)
            if password is not None:
                url = url.with_user(url.user or "guest").with_password(password)
            if "heartbeat" not in url.query:
                url = url.update_query(heartbeat=HEARTBEAT_S)
            urls.append(url)
        secrets = [url.password for url in urls if url.password]
        secrets += [URL(text).password or "" for text in self.urls]
        tls = any(url.scheme == "amqps" for url in urls)
        context = tls_context(self.ca_file, self.cert_file, self.key_file) if tls else None
        return urls, context, sorted({s for s in secrets if s}, key=len, reverse=True)


#: What ``connect`` accepts: one URL, a list of them, a ``BrokerTarget``, or settings.
Target = str | URL | Sequence[str] | BrokerTarget | AmqpConfig


def split_urls(text: str) -> tuple[str, ...]:
    """``"amqp://a/, amqp://b/"`` -> ``("amqp://a/", "amqp://b/")`` (as in ``POLLER_AMQP_URL``)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def display(url: str | URL) -> str:
    """A node as logs and error messages show it: scheme, host, port and vhost, no credentials."""
    parsed = URL(str(url))
    try:
        shown = parsed.with_user(None).with_query(None).with_fragment(None)
    except ValueError:  # not an absolute URL: show nothing of it
        return "<invalid URL>"
    return str(shown)


def read_password(path: Path) -> str:
    """The password in ``path``; Docker and Kubernetes secrets end with a newline that is not part of it."""
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def tls_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """Verify the broker against ``ca_file`` (the system's CAs when None); present a client
    certificate when ``cert_file`` is given (its key in ``key_file``, or in the same file)."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret in it replaced, longest first."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class NodeConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, moving to the next node each time it loses one.

    aio-pika calls ``_on_connection_close`` both when the connection in use is lost (a node that
    stops, crashes or stops answering heartbeats) and when an attempt to connect fails, and reads
    ``self.url`` for the next attempt: pointing ``url`` at the next node there is all failover
    needs. Channels, queues, bindings and consumers are then restored on the new node by aio-pika,
    and ``reconnect_callbacks`` and the channels' ``reopen_callbacks`` run, exactly as after a
    broker restart.

    After losing a node it pauses (``PAUSE_S``) before connecting to the next one. The other nodes
    need a moment to notice the loss and elect new leaders for the quorum queues it led, and
    RabbitMQ 3.10 refuses (nacks) every later publish of a channel whose first publish to a quorum
    queue came while that queue had no leader, for as long as the channel stays open.
    """

    def __init__(self, urls: Sequence[URL], start: int = 0, **kwargs: Any) -> None:
        self._nodes = tuple(urls)
        self._current = start % len(self._nodes)
        # Failed attempts since the last established connection.
        self._failures = 0
        self._established = False
        self._pause_s = PAUSE_S
        self._closing = asyncio.Event()
        super().__init__(self._nodes[self._current], **kwargs)

    @property
    def node(self) -> str:
        """The node in use (or to be tried next), without credentials."""
        return display(self._nodes[self._current])

    # aio-pika sleeps this long after each pass of its reconnect loop.
    @property
    def reconnect_interval(self) -> float:
        if self._failures == 0 or self._failures % len(self._nodes):
            return 0.0  # just connected, or other nodes of this round are still untried
        return self._jittered_pause_s()

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._pause_s = float(value)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._failures, self._established = 0, True
        # Nothing logged: a client library must not print to its application's output, which is
        # where structlog writes by default. The worker names the node in worker.started and
        # broker.reconnected.

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not (self._close_called or self.is_closed):
            was, lost, self._established = self.node, self._established, False
            if not lost:
                self._failures += 1
            self._current = (self._current + 1) % len(self._nodes)
            self.url = self._nodes[self._current]
            if lost:
                log.warning("broker.connection_lost", node=was, next=self.node)
                # aio-pika tries again as soon as this returns: the pause belongs here.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._jittered_pause_s())
            else:
                log.debug("broker.node_unreachable", node=was, next=self.node)
        await super()._on_connection_close(closing)

    async def close(self, exc: Any = asyncio.CancelledError) -> None:
        self._closing.set()  # a pause under way ends now: closing waits for it
        await super().close(exc)

    def _jittered_pause_s(self) -> float:
        return self._pause_s * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not a secret
