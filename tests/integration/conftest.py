"""Fixtures for tests against a real RabbitMQ and the simulator over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from poller.amqp import delete_queues
from poller.client import Event
from poller.config import ClusterSettings, Settings
from poller.runner import run_worker
from poller.simulator import Simulator, running_simulator
from tests.brokers import find_broker

PASSWORD = "s3cr3t-Pa55w0rd-7f3a"  # distinctive, so that tests can grep every output for it
USER = "admin"


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    try:
        url, container = find_broker()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield url
    if container is not None:
        container.stop()  # type: ignore[attr-defined]


@dataclass
class Names:
    watch_queue: str
    dead_letter_queue: str
    events_exchange: str


@pytest.fixture
async def names(amqp_url: str) -> AsyncIterator[Names]:
    """Queue and exchange names of this test alone, deleted afterwards."""
    token = secrets.token_hex(4)
    chosen = Names(f"test.{token}.watch", f"test.{token}.dead", f"test.{token}.events")
    yield chosen
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await delete_queues(connection, [chosen.watch_queue, chosen.dead_letter_queue])
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.exchange_delete(chosen.events_exchange)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[Simulator, str]]:
    simulator = Simulator(username=USER, password=PASSWORD)
    async with running_simulator(simulator) as base_url:
        yield simulator, base_url


def make_settings(
    amqp_url: str, names: Names, clusters: dict[str, ClusterSettings], **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        "watch_queue": names.watch_queue,
        "dead_letter_queue": names.dead_letter_queue,
        "events_exchange": names.events_exchange,
        "poll_interval_min": 0.1,
        "poll_interval_max": 0.4,
        "http_port": 0,
        "log_format": "json",
    }
    values.update(overrides)
    return Settings.model_validate({**values, "clusters": {}}).model_copy(
        update={"clusters": clusters}
    )


def cluster(base_url: str, **overrides: Any) -> ClusterSettings:
    return ClusterSettings(url=base_url, username=USER, password=PASSWORD, **overrides)


@dataclass
class RunningWorker:
    settings: Settings
    task: asyncio.Task[None]
    stop: asyncio.Event

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def start_worker(amqp_url: str) -> AsyncIterator[Callable[[Settings], Any]]:
    """Start in-process workers; each is stopped at the end of the test."""
    running: list[RunningWorker] = []

    async def start(settings: Settings) -> RunningWorker:
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(settings, stop))
        worker = RunningWorker(settings, task, stop)
        running.append(worker)
        await wait_for_queue(amqp_url, settings.watch_queue, task)
        return worker

    yield start
    for worker in running:
        if not worker.task.done():
            await worker.close()


async def wait_for_queue(amqp_url: str, queue: str, task: asyncio.Task[None] | None = None) -> None:
    from poller.amqp import queue_exists

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for _ in range(300):
            if task is not None and task.done():
                await task
            if await queue_exists(connection, queue):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"queue {queue} was not declared within 15 s")


@dataclass
class Collector:
    """Every message of one queue, kept in order of arrival."""

    messages: list[aio_pika.abc.AbstractIncomingMessage] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()

    async def wait_for(
        self,
        predicate: Callable[[list[aio_pika.abc.AbstractIncomingMessage]], bool],
        timeout: float = 20,
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.messages))
        return self.messages

    async def wait_keys(
        self, *keys: str, timeout: float = 20
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Wait until messages with all these routing keys arrived; return them in that order."""

        def have(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> bool:
            got = [m.routing_key for m in messages]
            return all(key in got for key in keys)

        try:
            await self.wait_for(have, timeout)
        except TimeoutError:
            got = [m.routing_key for m in self.messages]
            raise AssertionError(f"expected {keys}, got {got}") from None
        return [next(m for m in self.messages if m.routing_key == key) for key in keys]

    def events(self) -> list[Event]:
        return [event_of(m) for m in self.messages]


def event_of(message: aio_pika.abc.AbstractIncomingMessage) -> Event:
    headers = {
        k: v.decode() if isinstance(v, bytes) else v for k, v in (message.headers or {}).items()
    }
    properties = {"correlation_id": message.correlation_id, "message_id": message.message_id}
    return Event(message.routing_key or "", headers, properties, json.loads(message.body))


@pytest.fixture
async def broker_connection(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        yield connection


@pytest.fixture
async def subscribe(
    broker_connection: aio_pika.abc.AbstractRobustConnection,
) -> Callable[..., Any]:
    """``await subscribe(exchange, "#")`` -> a Collector of everything routed there."""

    async def open_(exchange: str | None, *keys: str) -> tuple[Collector, str]:
        channel = await broker_connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        if exchange is not None:
            topic = await channel.declare_exchange(
                exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            for key in keys or ("#",):
                await queue.bind(topic, key)
        collector = Collector()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await collector.add(message)

        await queue.consume(on_message, no_ack=True)
        return collector, queue.name

    return open_


@pytest.fixture
def publish(broker_connection: aio_pika.abc.AbstractRobustConnection) -> Callable[..., Any]:
    """``await publish(queue, body, **properties)``: a raw watch request, confirmed."""

    async def send(queue: str, body: bytes | dict[str, Any], **properties: Any) -> None:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        properties.setdefault("content_type", "application/json")
        properties.setdefault("delivery_mode", aio_pika.DeliveryMode.PERSISTENT)
        channel = await broker_connection.channel(publisher_confirms=True)
        async with channel:
            await channel.default_exchange.publish(aio_pika.Message(raw, **properties), queue)

    return send
