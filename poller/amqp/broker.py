"""The worker's side of RabbitMQ: topology, watch requests in, events out.

It declares the topology, consumes watch requests, and publishes with publisher confirms: events to
the topic exchange, copies to ``reply_to``, checkpoints back to the watch queue, and rejected requests
to the dead-letter queue. A ``Delivery`` knows whether the channel it came on is still open: a
delivery from a dead channel is never acknowledged, since the broker has already given it back to
the queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import ChannelInvalidStateError

from poller.amqp.connection import (
    PUBLISH_TIMEOUT_S,
    broker_errors,
    connect,
    publish_mandatory,
)
from poller.amqp.nodes import Target
from poller.errors import BrokerError
from poller.events import APP_ID, Envelope

ERROR_HEADER: Final = "x-poller-error"
#: Redeliveries before the broker itself dead-letters a request. On RabbitMQ 3.10 a channel closed
#: with the message unacknowledged counts too, so this leaves room for many crashes and outages;
#: every checkpoint starts a fresh message with a fresh count.
DELIVERY_LIMIT: Final = 50
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Topology:
    watch_queue: str = "ontap.jobs.watch"
    dead_letter_queue: str = "ontap.jobs.watch.dead"
    events_exchange: str = "ontap.jobs"


class Delivery:
    """One received watch request, with what is needed to settle or re-publish it."""

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message
        self.body: bytes = message.body
        self.headers: dict[str, Any] = dict(message.headers or {})
        self.correlation_id: str | None = message.correlation_id
        self.reply_to: str | None = message.reply_to
        self.message_id: str | None = message.message_id
        self.content_type: str | None = message.content_type
        self.content_encoding: str | None = message.content_encoding
        self._settled = False

    @property
    def stale(self) -> bool:
        """The channel it arrived on is gone; the broker will (or did) deliver it again."""
        try:
            return self._message.channel.is_closed
        except ChannelInvalidStateError:
            return True

    async def ack(self) -> None:
        """Acknowledge once; later calls do nothing.

        Two parts of the worker may settle one delivery at about the same time (a checkpoint and
        the arrival of its own copy). A second ``basic.ack`` of one tag makes the broker close the
        channel, and with it every other watch held on it, so the flag is set before the await.
        """
        if self._settled:
            return
        if self.stale:
            raise BrokerError("channel closed; the broker redelivers this request")
        self._settled = True
        with broker_errors("ack failed"):
            await self._message.ack()

    async def give_back(self) -> None:
        """Return the delivery to the queue now (``basic.nack`` with requeue), at most once."""
        if self._settled or self.stale:
            return
        self._settled = True
        with broker_errors("nack failed"):
            await self._message.nack(requeue=True)

    def copy(self, extra_headers: dict[str, Any]) -> aio_pika.Message:
        """Same body and properties, plus headers: for checkpoints and dead-lettering."""
        m = self._message
        return aio_pika.Message(
            body=m.body,
            headers={**self.headers, **extra_headers},
            content_type=m.content_type,
            content_encoding=m.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=m.priority,
            correlation_id=m.correlation_id,
            reply_to=m.reply_to,
            message_id=m.message_id,
            timestamp=m.timestamp,
            type=m.type,
            app_id=m.app_id,
            # user_id is left out: the broker refuses one that is not the publishing user.
        )


class Broker:
    """Topology, consuming and confirmed publishing on one robust connection."""

    def __init__(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        self.connection = connection
        self.topology = topology
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None

    @classmethod
    async def connect(
        cls, target: Target, topology: Topology, *, name: str = APP_ID, wait_s: float = 0.0
    ) -> Broker:
        """Connect as ``poller.amqp.connect`` does (``target``: URL, nodes or settings)."""
        return cls(await connect(target, name=name, wait_s=wait_s), topology)

    async def declare(self, prefetch: int) -> None:
        """Declare the watch queue, the dead-letter queue and the events exchange (idempotent)."""
        t = self.topology
        with broker_errors("cannot declare the topology"):
            self._channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            await self._channel.set_qos(prefetch_count=prefetch)
            await self._channel.declare_queue(
                t.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
            )
            self._queue = await self._channel.declare_queue(
                t.watch_queue, durable=True, arguments=watch_queue_arguments(t)
            )
            self._exchange = await self._channel.declare_exchange(
                t.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )

    @property
    def node(self) -> str | None:
        """The RabbitMQ node in use, without credentials (None when that is not known)."""
        node = getattr(self.connection, "node", None)
        return node if isinstance(node, str) else None

    @property
    def consuming(self) -> bool:
        return (
            self._consumer_tag is not None
            and not self.connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def consume(self, handler: Callable[[Delivery], Awaitable[None]]) -> None:
        assert self._queue is not None, "declare() first"

        async def on_message(message: AbstractIncomingMessage) -> None:
            await handler(Delivery(message))

        self._consumer_tag = await self._queue.consume(on_message)

    async def stop_consuming(self) -> None:
        if self._queue is None or self._consumer_tag is None:
            return
        tag, self._consumer_tag = self._consumer_tag, None
        try:
            with broker_errors("cancel failed"):
                await self._queue.cancel(tag)
        except BrokerError as exc:
            log.warning("broker.cancel_failed", error=str(exc))

    async def publish_event(self, envelope: Envelope) -> None:
        """To the events exchange; returns once the broker confirmed it."""
        assert self._exchange is not None, "declare() first"
        await self._publish(
            self._exchange, _message(envelope), envelope.routing_key, mandatory=False
        )

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        """A copy for one watch's ``reply_to``; a vanished reply queue is not an error."""
        await self._publish(self._default(), _message(envelope), reply_to, mandatory=False)

    async def requeue(self, delivery: Delivery, headers: dict[str, Any]) -> None:
        """Put a copy of ``delivery`` with new headers back on the watch queue, confirmed."""
        message = delivery.copy(headers)
        await self._publish(self._default(), message, self.topology.watch_queue, mandatory=True)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        message = delivery.copy({ERROR_HEADER: reason})
        await self._publish(
            self._default(), message, self.topology.dead_letter_queue, mandatory=True
        )

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` each time the consuming channel is open again.

        That is after the connection was re-established, and also after the broker closed the
        channel alone (a consumer timeout, a channel error): either way every delivery held on the
        old channel has gone back to the queue.
        """

        async def reconnected(*_args: Any) -> None:
            await callback()

        if isinstance(self._channel, AbstractRobustChannel):
            # A robust channel is reopened after a connection recovery too: one callback covers both.
            self._channel.reopen_callbacks.add(reconnected)
        else:
            self.connection.reconnect_callbacks.add(reconnected)

    async def close(self) -> None:
        try:
            with broker_errors("close failed"):
                await self.connection.close()
        except BrokerError as exc:
            log.warning("broker.close_failed", error=str(exc))

    def _default(self) -> AbstractExchange:
        assert self._channel is not None, "declare() first"
        return self._channel.default_exchange

    async def _publish(
        self, exchange: AbstractExchange, message: aio_pika.Message, key: str, *, mandatory: bool
    ) -> None:
        with broker_errors(f"publish to {key!r} failed"):
            if mandatory:
                await publish_mandatory(exchange, message, key)
            else:
                await exchange.publish(message, key, mandatory=False, timeout=PUBLISH_TIMEOUT_S)


def discovery_queue(topology: Topology, cluster: str) -> str:
    """The queue whose token is the lease on discovering ``cluster``, beside the watch queue."""
    return f"{topology.watch_queue}.discover.{cluster}"


def watch_queue_arguments(topology: Topology) -> dict[str, Any]:
    """A quorum queue that dead-letters, at least once, what outlives ``DELIVERY_LIMIT``."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": topology.dead_letter_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def _message(envelope: Envelope) -> aio_pika.Message:
    return aio_pika.Message(
        body=envelope.body,
        headers=dict(envelope.headers),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=envelope.message_id,
        type=envelope.type,
        timestamp=envelope.timestamp,
        app_id=APP_ID,
        correlation_id=envelope.correlation_id,
    )
