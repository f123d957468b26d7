"""The benchmark's side of RabbitMQ: watch requests in, events out, and the broker's raw limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from poller.amqp import delete_queues
from poller.amqp.broker import Topology as _Topology
from poller.amqp.broker import watch_queue_arguments

#: Events that end a watch: an end state of the job, or one of the watch.* outcomes.
FINAL_KEYS = ("success", "failure", "cancelled", "expired")


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
    sample: tuple[bytes, dict[str, Any]] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.time()
        self.count += 1
        self.first_at = self.first_at or now
        key = message.routing_key or ""
        headers = message.headers or {}
        subject = str(headers.get("ce-subject", ""))
        if self.sample is None:
            self.sample = (message.body, dict(headers))
        if key.startswith("watch.") or key.rsplit(".", 1)[-1] in FINAL_KEYS:
            self.final_ids[subject].add(str(headers.get("ce-id")))
            if subject not in self.final_at:
                self.final_at[subject] = now
                self.last_final_at = now
                if len(self.final_at) >= self.expected:
                    self.done.set()


async def subscribe(connection: AbstractConnection, exchange: str, log: EventLog) -> None:
    """An exclusive queue bound to every event of ``exchange``; arrivals go to ``log``."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1000)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    topic = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    await queue.bind(topic, "#")

    async def on_message(message: AbstractIncomingMessage) -> None:
        log.on_message(message)

    await queue.consume(on_message, no_ack=True)


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
                            json.dumps({"uuid": u, "cluster": "sim"}).encode(),
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
    await delete_queues(connection, [names["watch_queue"], names["dead_letter_queue"]])
    async with connection.channel() as channel:
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(names["events_exchange"])


async def raw_publish_rate(
    connection: AbstractConnection,
    exchange_name: str,
    sample: tuple[bytes, dict[str, Any]],
    count: int,
    *,
    tasks: int,
    chunk: int,
) -> float:
    """Messages per second the broker confirms, published the way the worker publishes events.

    Same body and headers as a real event, persistent, publisher confirms; ``tasks`` concurrent
    loops (the worker's ``max_concurrent_requests`` polls), each publishing ``chunk`` messages at
    once and awaiting their confirms (the worker's gather over one collection answer). A queue bound
    to the exchange is consumed meanwhile, as the subscriber does during a run.
    """
    body, headers = sample
    log = EventLog(expected=count)
    await subscribe(connection, exchange_name, log)
    async with connection.channel(publisher_confirms=True) as channel:
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        remaining = [count]

        async def loop() -> None:
            while remaining[0] > 0:
                n = min(chunk, remaining[0])
                remaining[0] -= n
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(
                                body,
                                headers=headers,
                                content_type="application/json",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=str(i),
                                app_id="bench-raw",
                            ),
                            "job.sim.success",
                        )
                        for i in range(n)
                    )
                )

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(tasks)))
        elapsed = time.perf_counter() - started
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(exchange_name)
    return count / elapsed
