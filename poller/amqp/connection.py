"""Connecting to RabbitMQ, and the one place where aio-pika's failures become ``BrokerError``.

The worker's adapter (``broker``), the discovery lease (``lease``) and the client side
(``subscriber``) all connect and translate errors through here.
"""

from __future__ import annotations

import asyncio
import contextlib
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


async def connect(url: str, *, name: str = APP_ID, wait_s: float = 0.0) -> AbstractRobustConnection:
    """A robust connection; ``BrokerError`` when RabbitMQ is still unreachable after ``wait_s``.

    A worker started beside its broker (compose, Kubernetes) waits for it instead of crash-looping;
    once connected, aio-pika's robust connection takes over reconnecting.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(FAILURES),
        stop=stop_after_delay(wait_s),
        # Not wait_exponential_jitter: its `initial` is deprecated in tenacity 9.2, `multiplier`
        # does not exist before it, and pyproject allows both.
        wait=wait_exponential(multiplier=0.5, max=5.0) + wait_random(0, 1.0),
        before_sleep=lambda state: log.warning(
            "broker.connect_retrying",
            attempt=state.attempt_number,
            error=repr(state.outcome.exception() if state.outcome else None),
        ),
        reraise=True,
    )
    with broker_errors("cannot connect to RabbitMQ"):
        async for attempt in retrying:
            with attempt:
                return await aio_pika.connect_robust(
                    url, client_properties={"connection_name": name}
                )
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True always raises


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
