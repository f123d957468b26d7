"""The benchmark's side of RabbitMQ: watch requests in, events out with their arrival times."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from poller.amqp import delete_queues
from poller.amqp.broker import Topology as _Topology
from poller.amqp.broker import discovery_queue, watch_queue_arguments

#: Events that end a watch: an end state of the job, or one of the watch.* outcomes.
FINAL_KEYS = ("success", "failure", "cancelled", "expired")
#: The name of the simulated cluster in the worker's configuration and in every request.
CLUSTER = "sim"


@dataclass
class EventLog:
    """Every event of one run as the subscriber received it, with its arrival time."""

    expected: int
    count: int = 0
    first_at: float | None = None
    last_final_at: float | None = None
    #: First arrival of the final event of each job.
    final_at: dict[str, float] = field(default_factory=dict)
    #: Every distinct ce-id seen for the final event of each job.
    final_ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: Deliveries of each job's final event (more than one: redelivered, same or other ce-id).
    final_count: Counter[str] = field(default_factory=Counter)
    #: The first end's body, headers and routing key: the relay publishes messages like it.
    sample: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def conflicting(self) -> int:
        """Jobs whose end arrived under two different ce-ids."""
        return sum(1 for ids in self.final_ids.values() if len(ids) > 1)

    @property
    def repeated(self) -> int:
        """Deliveries of an end beyond the first."""
        return sum(count - 1 for count in self.final_count.values())

    def on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.time()
        self.count += 1
        self.first_at = self.first_at or now
        key = message.routing_key or ""
        headers = message.headers or {}
        subject = str(headers.get("ce-subject", ""))
        if key.startswith("watch.") or key.rsplit(".", 1)[-1] in FINAL_KEYS:
            if self.sample is None:
                self.sample = {
                    "body": message.body.decode(),
                    "headers": {k: _text(v) for k, v in headers.items()},
                    "routing_key": key,
                }
            self.final_ids[subject].add(str(headers.get("ce-id")))
            self.final_count[subject] += 1
            if subject not in self.final_at:
                self.final_at[subject] = now
                self.last_final_at = now
                if len(self.final_at) >= self.expected:
                    self.done.set()


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


async def subscribe(
    connection: AbstractConnection, exchange: str, log: EventLog
) -> AbstractChannel:
    """An exclusive queue bound to every event of ``exchange``; arrivals go to ``log``.

    Closing the channel returned ends the subscription and deletes the queue.
    """
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    topic = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    await queue.bind(topic, "#")

    async def on_message(message: AbstractIncomingMessage) -> None:
        log.on_message(message)

    await queue.consume(on_message, no_ack=True)
    return channel


def lease_queues(names: dict[str, str]) -> list[str]:
    """The discovery lease queue of the bench's one cluster, beside the watch queue."""
    topology = _Topology(names["watch_queue"], names["dead_letter_queue"], names["events_exchange"])
    return [discovery_queue(topology, CLUSTER)]


async def declare_watch_queue(connection: AbstractConnection, names: dict[str, str]) -> None:
    """The watch queue exactly as the worker declares it, so requests can wait for the worker."""
    topology = _Topology(names["watch_queue"], names["dead_letter_queue"], names["events_exchange"])
    async with connection.channel() as channel:
        await channel.declare_queue(
            topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await channel.declare_queue(
            topology.watch_queue, durable=True, arguments=watch_queue_arguments(topology)
        )
        await channel.declare_exchange(
            topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )


async def publish_requests(
    connection: AbstractConnection, queue: str, uuids: list[str], window: int = 500
) -> None:
    """One watch request per job, persistent and confirmed, ``window`` in flight at a time."""
    async with connection.channel(publisher_confirms=True) as channel:
        exchange = channel.default_exchange
        for start in range(0, len(uuids), window):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            json.dumps({"uuid": u, "cluster": CLUSTER}).encode(),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            message_id=f"bench-{u}",
                        ),
                        queue,
                        mandatory=True,
                    )
                    for u in uuids[start : start + window]
                )
            )


async def delete_topology(connection: AbstractConnection, names: dict[str, str]) -> None:
    """The run's queues (and the discovery lease's, when it had one) and its exchange."""
    queues = [names["watch_queue"], names["dead_letter_queue"], *lease_queues(names)]
    await delete_queues(connection, queues)
    async with connection.channel() as channel:
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(names["events_exchange"])
