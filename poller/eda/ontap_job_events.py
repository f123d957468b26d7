"""ansible-rulebook event source: the events of ontap-job-poller, read from RabbitMQ.

ansible-rulebook runs this file (``-S "$(python -m poller.eda)"``) and calls ``main(queue, args)``.
Each event published on the poller's exchange becomes one rulebook event (see
``poller.eda.rulebook``), acknowledged to RabbitMQ once it is on the rulebook's queue: an event
that ansible-rulebook never took is delivered again (to a durable ``queue``) rather than lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Final, Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from poller.amqp import connect
from poller.amqp.subscriber import received
from poller.eda.rulebook import SourceArgs, rulebook_event

DOCUMENTATION = r"""
---
short_description: Receive the events of ontap-job-poller (NetApp ONTAP jobs) from RabbitMQ.
description:
  - An ansible-rulebook event source plugin that binds a queue to the topic exchange of
    ontap-job-poller and turns every CloudEvent published there into one rulebook event.
  - Each event has the keys C(id), C(type), C(source), C(subject) (the job UUID), C(time),
    C(cluster), C(previous_state) and C(routing_key), plus C(job), the ONTAP job object (events
    C(ontap.job.*) and C(ontap.watch.timeout)), or C(error), ONTAP's error object (events
    C(ontap.watch.not_found) and C(ontap.watch.error)).
  - A message is acknowledged once its event is on the rulebook's queue. After a dropped connection
    an event may come twice, with the same C(id).
options:
  amqp_url:
    description:
      - The RabbitMQ URL, or a list of the node URLs of one RabbitMQ cluster.
    type: raw
    required: false
    default: "amqp://guest:guest@localhost:5672/"
  exchange:
    description:
      - The poller's events exchange (its C(events_exchange) setting).
    type: str
    required: false
    default: "ontap.jobs"
  bindings:
    description:
      - Routing keys to bind, e.g. C(job.*.failure), C(job.cluster1.#), C(watch.#).
    type: list
    elements: str
    required: false
    default: ["#"]
  queue:
    description:
      - A durable queue to consume, declared if missing, so that events published while
        ansible-rulebook is down wait for it.
      - Without it, an exclusive queue of its own that goes away with the rulebook.
    type: str
    required: false
"""

EXAMPLES = r"""
- name: React to ONTAP jobs
  hosts: all
  sources:
    - ontap_job_events:
        amqp_url: amqp://guest:guest@rabbitmq.example.com:5672/
        bindings:
          - job.*.failure
          - watch.#
  rules:
    - name: A job failed
      condition: event.job.state == "failure"
      action:
        debug:
          msg: "job {{ event.subject }} failed on {{ event.cluster }}: {{ event.job.message }}"
    - name: ONTAP does not know the job
      condition: event.type == "ontap.watch.not_found"
      action:
        debug:
          msg: "job {{ event.subject }}: error {{ event.error.code }}"
"""

#: Events taken from RabbitMQ ahead of the rulebook's queue, each unacknowledged until it is on it.
PREFETCH: Final = 100
#: How long the source waits for RabbitMQ when it starts before it gives up.
CONNECT_WAIT_S: Final = 30.0
#: An ack or reject that fails because the connection dropped: the broker hands the message out
#: again once the (robust) connection is back, so the rulebook sees that event twice, same ``id``.
_LOST_ACK: Final = (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError)
log = logging.getLogger("poller.eda.ontap_job_events")


class EventQueue(Protocol):
    """What ansible-rulebook hands the source: an ``asyncio.Queue`` or a queue that filters."""

    async def put(self, item: dict[str, Any]) -> None: ...


async def main(queue: EventQueue, args: dict[str, Any]) -> None:
    """Put one rulebook event per message on ``queue`` until cancelled."""
    options = SourceArgs.parse(args)
    # A list names the nodes of one RabbitMQ cluster; poller.amqp.connect takes either.
    connection = await connect(
        options.amqp_url,  # type: ignore[arg-type, unused-ignore]
        name="ontap-job-poller eda",
        wait_s=CONNECT_WAIT_S,
    )
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        exchange = await channel.declare_exchange(
            options.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        if options.queue is not None:
            events = await channel.declare_queue(options.queue, durable=True)
        else:
            events = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in options.bindings:
            await events.bind(exchange, key)
        log.info(
            "ontap_job_events: consuming %s bound to %s with %s",
            events.name,
            options.exchange,
            ", ".join(options.bindings),
        )
        async with events.iterator() as messages:
            async for message in messages:
                await _handle(message, queue)
    finally:
        await connection.close()


async def _handle(message: AbstractIncomingMessage, queue: EventQueue) -> None:
    """Put the message's event on ``queue``, then acknowledge it."""
    event = rulebook_event(received(message))
    if event is None:
        log.warning(
            "ontap_job_events: dropped a message that is not a CloudEvent (routing key %s)",
            message.routing_key,
        )
        await _settle(message.reject(requeue=False), "it")
        return
    await queue.put(event)
    await _settle(message.ack(), f"event {event['id']}")


async def _settle(answer: Awaitable[None], what: str) -> None:
    """Send an ack or a reject; on a connection that just dropped, say what comes back."""
    try:
        await answer
    except _LOST_ACK as exc:
        log.warning("ontap_job_events: %r: the broker will deliver %s again", exc, what)


if __name__ == "__main__":
    # Print the events of a local poller as the rulebook would see them.
    class _PrintQueue:
        async def put(self, item: dict[str, Any]) -> None:
            print(item)

    asyncio.run(main(_PrintQueue(), {}))
