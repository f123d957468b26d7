"""Connecting to RabbitMQ, and the one place where aio-pika's failures become ``BrokerError``.

Everything that talks to RabbitMQ connects through ``connect``: the worker's adapter (``broker``),
the ``watch`` and ``events`` commands, the client API, the demo and the EDA source. It takes the
nodes of a cluster, TLS files and a password file (``nodes.BrokerTarget``), and returns a connection
that fails over from node to node (``nodes.NodeConnection``). The client side (``subscriber``) and
the worker's adapter translate errors through ``broker_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from typing import Final

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, PublishError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from yarl import URL

from poller.amqp.nodes import (
    CONNECT_TIMEOUT_S,
    PAUSE_S,
    BrokerTarget,
    NodeConnection,
    Target,
    display,
    scrub,
)
from poller.errors import BrokerError, NotRouted
from poller.events import APP_ID

PUBLISH_TIMEOUT_S: Final = 30.0
#: What aio-pika, aiormq and the socket under them raise when the broker is away or refuses.
FAILURES: Final = (AMQPError, ConnectionError, OSError, asyncio.TimeoutError, RuntimeError)
log = structlog.get_logger(__name__)


@contextlib.contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Raise aio-pika's failures inside the block as ``BrokerError`` saying ``what`` failed."""
    try:
        yield
    except BrokerError:
        raise
    except FAILURES as exc:
        raise BrokerError(f"{what}: {exc!r}") from exc


async def connect(
    target: Target, *, name: str = APP_ID, wait_s: float = 0.0
) -> AbstractRobustConnection:
    """A robust connection to the first node of ``target`` that answers.

    ``target`` is one ``amqp://``/``amqps://`` URL, a list of the nodes of one RabbitMQ cluster
    (or one comma-separated string of them), a ``BrokerTarget``, or settings with ``amqp_url``,
    ``amqp_ca_file``, ``amqp_cert_file``, ``amqp_key_file`` and ``amqp_password_file`` (such as
    ``poller.config.Settings``). ``name`` is the connection's name in RabbitMQ's management UI.

    The nodes are tried in order, each once per round; rounds are repeated for up to ``wait_s``
    seconds (a worker started beside its broker waits for it instead of crash-looping), after which
    ``BrokerError`` says why each node failed, without any password. Once connected, the
    connection reconnects by itself, to the next node of the list when the one in use goes away
    (``NodeConnection``): channels, consumers and callbacks are restored as after a broker restart.
    """
    broker = BrokerTarget.of(target)
    try:
        urls, context, secrets = broker.resolve()
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"cannot connect to RabbitMQ: {exc}") from None
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(_Unreachable),
        stop=stop_after_delay(wait_s),
        # Not wait_exponential_jitter: its `initial` is deprecated in tenacity 9.2, `multiplier`
        # does not exist before it, and pyproject allows both.
        wait=wait_exponential(multiplier=0.5, max=5.0) + wait_random(0, 1.0),
        before_sleep=lambda state: log.warning(
            "broker.connect_retrying",
            attempt=state.attempt_number,
            error=str(state.outcome.exception() if state.outcome else None),
        ),
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                return await _first_answering(urls, context, name, secrets)
    except _Unreachable as exc:
        raise BrokerError(f"cannot connect to RabbitMQ: {exc}") from None
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True always raises


class _Unreachable(Exception):
    """No node answered in one round; the text says why each failed, passwords scrubbed."""


async def _first_answering(
    urls: list[URL], context: ssl.SSLContext | None, name: str, secrets: list[str]
) -> NodeConnection:
    failures = []
    for start, url in enumerate(urls):
        connection = NodeConnection(
            urls,
            start,
            ssl_context=context,
            client_properties={"connection_name": name},
            reconnect_interval=PAUSE_S,
        )
        try:
            await connection.connect(timeout=CONNECT_TIMEOUT_S)
        except FAILURES as exc:
            failures.append(f"{display(url)}: {scrub(describe(exc), secrets)}")
            with contextlib.suppress(*FAILURES):
                await connection.close()
            continue
        return connection
    raise _Unreachable("; ".join(failures))


def describe(exc: BaseException) -> str:
    """Why a connection attempt failed, in words an operator can act on."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__  # aiormq wraps socket and TLS errors in its own
    if isinstance(cause, ssl.SSLCertVerificationError):
        if "hostname" in str(cause.verify_message).lower():
            return f"TLS: the broker's certificate does not name this host: {cause.verify_message}"
        return (
            "TLS: the broker's certificate is not trusted (is amqp_ca_file the CA that signed "
            f"it?): {cause.verify_message}"
        )
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or cause}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    return repr(exc)


async def publish_mandatory(
    exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
) -> None:
    """Publish, confirmed; ``NotRouted`` when the broker returns it (no queue of that name)."""
    try:
        await exchange.publish(message, routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_S)
    except PublishError as exc:
        raise NotRouted(f"no queue named {routing_key!r}: is a worker running?") from exc


async def queue_exists(connection: AbstractConnection, name: str) -> bool:
    """Whether a queue of that name is declared (the demo and tests wait for a worker so)."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        with contextlib.suppress(*FAILURES):
            await channel.close()
    return True


async def delete_queues(connection: AbstractConnection, names: list[str]) -> None:
    """Delete queues (the demo's and the tests'); missing ones are fine."""
    for name in names:
        channel = await connection.channel()
        try:
            await channel.queue_delete(name)
        except FAILURES as exc:
            log.debug("broker.queue_delete_failed", queue=name, error=repr(exc))
        finally:
            with contextlib.suppress(*FAILURES):
                await channel.close()
