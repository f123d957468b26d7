"""The client side of RabbitMQ: publish a watch request, receive events.

Used by the public client API (``poller.client``), the ``watch`` and ``events`` commands, and the
demo. It shares nothing with the worker's adapter but the connection and the error mapping.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from poller.amqp.connection import FAILURES, broker_errors, publish_mandatory
from poller.events import APP_ID


@dataclass(frozen=True, slots=True)
class Received:
    """An event as a subscriber gets it: routing key, AMQP properties, headers, body."""

    routing_key: str
    headers: dict[str, Any]
    body: bytes
    content_type: str | None
    properties: dict[str, Any]


async def publish_request(
    connection: AbstractConnection,
    queue: str,
    body: bytes,
    *,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish a watch request, mandatory and confirmed: ``NotRouted`` when no queue exists."""
    message = aio_pika.Message(
        body=body,
        headers=headers or {},
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=correlation_id,
        reply_to=reply_to,
        message_id=message_id,
        app_id=APP_ID,
    )
    with broker_errors(f"publish to {queue!r} failed"):
        async with connection.channel(publisher_confirms=True, on_return_raises=True) as channel:
            await publish_mandatory(channel.default_exchange, message, queue)


class Subscription:
    """A private, auto-deleted queue that receives events: bound to the exchange, or a reply queue."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue) -> None:
        self._channel = channel
        self.queue = queue

    @property
    def name(self) -> str:
        return self.queue.name

    @classmethod
    async def open(
        cls,
        connection: AbstractConnection,
        *,
        exchange: str | None = None,
        bindings: tuple[str, ...] = (),
    ) -> Subscription:
        with broker_errors("cannot subscribe"):
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            if exchange is not None:
                topic = await channel.declare_exchange(
                    exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                for key in bindings:
                    await queue.bind(topic, key)
        return cls(channel, queue)

    async def __aiter__(self) -> AsyncIterator[Received]:
        with broker_errors("subscription lost"):
            async with self.queue.iterator(no_ack=True) as messages:
                async for message in messages:
                    yield received(message)

    async def close(self) -> None:
        with contextlib.suppress(*FAILURES):
            await self._channel.close()


def received(message: AbstractIncomingMessage) -> Received:
    """An incoming AMQP message as plain data (headers decoded to text)."""
    properties = {
        "content_type": message.content_type,
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "type": message.type,
        "app_id": message.app_id,
        "delivery_mode": int(message.delivery_mode) if message.delivery_mode else None,
        "timestamp": message.timestamp.isoformat() if message.timestamp else None,
    }
    headers = {
        k: v.decode() if isinstance(v, bytes) else v for k, v in (message.headers or {}).items()
    }
    return Received(
        routing_key=message.routing_key or "",
        headers=headers,
        body=message.body,
        content_type=message.content_type,
        properties=properties,
    )
