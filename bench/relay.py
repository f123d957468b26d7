"""A bare relay: the AMQP work of the worker's capacity run, and nothing else.

For each watch request in ``--queue`` (consumed with ``--prefetch`` unacknowledged, on one channel
with publisher confirms, as the worker consumes), it publishes one event to the topic exchange
``--exchange`` (persistent, the body and ``ce-*`` headers of a real event of the worker, only
``ce-id`` and ``ce-subject`` made the request's), waits for the broker's confirm, then acknowledges
the request. No ONTAP, no checkpoint, no log line: the ceiling of a worker that does this work.

Run by bench/capacity.py as a process of its own, measured like the worker: it prints ``ready``
once connected, starts consuming when a line (the go signal) arrives on stdin, relays until
SIGTERM, then prints ``done`` and its count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage


class Relay:
    """Consume a request, publish its event with confirm, acknowledge the request."""

    def __init__(self, exchange: AbstractExchange, sample: dict[str, Any]) -> None:
        self.exchange = exchange
        self.body: bytes = sample["body"].encode()
        self.headers: dict[str, Any] = sample["headers"]
        self.routing_key: str = sample["routing_key"]
        self.acked = 0

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        job_uuid = json.loads(message.body)["uuid"]
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-relay/{job_uuid}"))
        event = aio_pika.Message(
            self.body,
            headers={**self.headers, "ce-id": event_id, "ce-subject": job_uuid},
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=event_id,
            type=str(self.headers.get("ce-type", "")),
            timestamp=datetime.now(UTC),
            app_id="bench-relay",
        )
        await self.exchange.publish(event, self.routing_key, mandatory=False)
        await message.ack()
        self.acked += 1


async def relay(args: argparse.Namespace) -> dict[str, int]:
    sample = json.loads(args.sample.read_text())
    connection = await aio_pika.connect_robust(args.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=args.prefetch)
        exchange = await channel.declare_exchange(
            args.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.get_queue(args.queue, ensure=True)
        relay = Relay(exchange, sample)
        # Stopped by the benchmark once its subscriber has every event: exiting on its own,
        # the relay would take its CPU count with it.
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await queue.consume(relay.on_message)
        await stop.wait()
    return {"acked": relay.acked}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True, help="the watch requests")
    parser.add_argument("--exchange", required=True, help="the topic exchange of the events")
    parser.add_argument("--prefetch", type=int, required=True, help="the worker's max_watches")
    parser.add_argument(
        "--sample", type=Path, required=True, help="JSON: body, headers, routing_key"
    )
    counts = asyncio.run(relay(parser.parse_args()))
    print("done", json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
