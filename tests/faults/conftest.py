"""Fixtures of the fault tests: a private RabbitMQ node, the simulator, worker processes, events.

One private node serves the whole session (a node takes seconds to boot); each test has queues
and an exchange of its own. The node runs with ``consumer_timeout`` = 10 s and a 1 s channel tick,
so every test here also proves that checkpoints keep deliveries clear of the consumer timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from poller.simulator import Simulator, running_simulator
from tests.faults.private_broker import BrokerUnavailable, PrivateBroker
from tests.faults.worker_process import WorkerProcess

PASSWORD = "s3cr3t-Pa55w0rd-7f3a"
USER = "admin"
CONSUMER_TIMEOUT_MS = 10_000
#: Well below the private node's consumer timeout.
CHECKPOINT_INTERVAL_S = 3.0


@pytest.fixture(scope="session")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A RabbitMQ node of this test session alone (never the machine's shared broker)."""
    node, problem = None, ""
    try:
        node = PrivateBroker(
            tmp_path_factory.mktemp("rabbitmq"), consumer_timeout_ms=CONSUMER_TIMEOUT_MS
        )
        node.start()
    except BrokerUnavailable as exc:
        problem = str(exc)
    if node is None or problem:
        pytest.fail(problem, pytrace=False)  # never a skip: a missing broker is a failure
    yield node
    node.close()


@pytest.fixture
def broker(private_broker: PrivateBroker) -> PrivateBroker:
    """The private node, running (a test that stopped it may have failed before restarting it)."""
    if private_broker.process is None or private_broker.process.poll() is not None:
        private_broker.start()
    return private_broker


@pytest.fixture
def broker_log(broker: PrivateBroker) -> Callable[[], str]:
    """``broker_log()``: what the private node has logged since this test began."""
    mark = broker.log_mark()
    return lambda: broker.log_since(mark)


@dataclass(frozen=True)
class Names:
    watch_queue: str
    dead_letter_queue: str
    events_exchange: str
    events_queue: str
    reply_queue: str


@pytest.fixture
async def names(broker: PrivateBroker) -> AsyncIterator[Names]:
    """Queue and exchange names of this test alone, deleted afterwards."""
    token = secrets.token_hex(4)
    chosen = Names(
        *(f"faults.{token}.{part}" for part in ("watch", "dead", "events", "seen", "replies"))
    )
    yield chosen
    if broker.process is None or broker.process.poll() is not None:
        return
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(broker.url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for queue in (
                chosen.watch_queue,
                chosen.dead_letter_queue,
                chosen.events_queue,
                chosen.reply_queue,
            ):
                await channel.queue_delete(queue)
            await channel.exchange_delete(chosen.events_exchange)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulated ONTAP cluster over real HTTP: (simulator, base URL)."""
    simulator = Simulator(username=USER, password=PASSWORD)
    async with running_simulator(simulator) as base_url:
        yield simulator, base_url


def worker_config(broker: PrivateBroker, names: Names, **overrides: Any) -> dict[str, Any]:
    """A worker configuration for ``names`` on the private node; ``clusters`` given by the test."""
    config: dict[str, Any] = {
        "amqp_url": broker.url,
        "watch_queue": names.watch_queue,
        "dead_letter_queue": names.dead_letter_queue,
        "events_exchange": names.events_exchange,
        "poll_interval_min": 0.2,
        "poll_interval_max": 1.0,
        "checkpoint_interval": CHECKPOINT_INTERVAL_S,
        "log_format": "json",
    }
    config.update(overrides)
    return config


def cluster_table(base_url: str, **overrides: Any) -> dict[str, Any]:
    return {"url": base_url, "username": USER, "password": PASSWORD, **overrides}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``workers(config, env=..., name=...)`` starts a worker process; all are killed at the end."""
    started: list[WorkerProcess] = []

    def start(
        config: dict[str, Any], *, env: dict[str, str] | None = None, name: str | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, name or f"worker{len(started)}", config, env=env)
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.kill()
        if worker.process is not None:
            worker.process.wait(30)


@dataclass
class Seen:
    """One event as the test's subscriber received it."""

    routing_key: str
    ce_id: str
    subject: str
    correlation_id: str | None
    headers: dict[str, Any]
    body: Any
    redelivered: bool


@dataclass
class EventLog:
    """Every event routed to the test's durable queue, in order of arrival."""

    events: list[Seen] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, event: Seen) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[Seen]], bool], timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: predicate(self.events))
        except TimeoutError:
            keys = [e.routing_key for e in self.events][-40:]
            raise AssertionError(f"not seen within {timeout_s} s; last events: {keys}") from None

    def finals(self) -> dict[str, list[Seen]]:
        """Final events by job: job.*.<end state> and watch.*.*."""
        ends = {"success", "failure", "cancelled", "expired"}
        out: dict[str, list[Seen]] = {}
        for e in self.events:
            kind, _, state = e.routing_key.split(".", 2)
            if kind == "watch" or (kind == "job" and state in ends):
                out.setdefault(e.subject, []).append(e)
        return out


async def collect(
    url: str,
    queue_name: str,
    exchange_name: str | None,
    *,
    connect: Callable[[str], Awaitable[aio_pika.abc.AbstractRobustConnection]] = (
        aio_pika.connect_robust
    ),
) -> tuple[EventLog, aio_pika.abc.AbstractRobustConnection]:
    """Consume ``queue_name`` (durable, bound to ``exchange_name`` if given) into an EventLog.

    Durable and acknowledged one by one, so that a broker restart loses nothing on the
    subscriber's side either: a lost event in these tests is always the worker's fault.
    ``connect`` opens the connection (aio-pika's own by default).
    """
    log = EventLog()
    connection = await connect(url)
    channel = await connection.channel()
    queue = await channel.declare_queue(
        queue_name, durable=True, arguments={"x-queue-type": "quorum"}
    )
    if exchange_name is not None:
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await queue.bind(exchange, "#")

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers = {
            k: v.decode() if isinstance(v, bytes) else v for k, v in (message.headers or {}).items()
        }
        await log.add(
            Seen(
                routing_key=message.routing_key or "",
                ce_id=str(headers.get("ce-id")),
                subject=str(headers.get("ce-subject")),
                correlation_id=message.correlation_id,
                headers=headers,
                body=json.loads(message.body),
                redelivered=bool(message.redelivered),
            )
        )
        await message.ack()

    await queue.consume(on_message)
    return log, connection


@pytest.fixture
async def events(broker: PrivateBroker, names: Names) -> AsyncIterator[EventLog]:
    """Everything published on the test's events exchange."""
    log, connection = await collect(broker.url, names.events_queue, names.events_exchange)
    yield log
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 10)


@pytest.fixture
async def replies(broker: PrivateBroker, names: Names) -> AsyncIterator[EventLog]:
    """Everything sent to ``names.reply_queue``: give it as ``reply_to`` to hear from each watch."""
    log, connection = await collect(broker.url, names.reply_queue, None)
    yield log
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 10)


@pytest.fixture
async def publish(broker: PrivateBroker) -> AsyncIterator[Callable[..., Any]]:
    """``await publish(queue, body, **properties)``: a raw request, persistent and confirmed."""
    connection = await aio_pika.connect_robust(broker.url)
    channel = await connection.channel(publisher_confirms=True)

    async def send(queue: str, body: bytes | dict[str, Any], **properties: Any) -> None:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        properties.setdefault("content_type", "application/json")
        properties.setdefault("delivery_mode", aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(
            aio_pika.Message(raw, **properties), queue, mandatory=True, timeout=30
        )

    yield send
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 10)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it is true; fail saying ``what`` did not happen in time."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.25)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout_s} s") from None


async def watches_held(worker: WorkerProcess) -> float:
    samples = await worker.metrics()
    return sum(v for k, v in samples.items() if k.startswith("ontap_poller_watches_active"))


async def settled(
    workers_: list[WorkerProcess], url: str, queue: str, timeout_s: float = 60
) -> None:
    """Until no watch is held by any of ``workers_`` nor waiting in ``queue``."""

    async def idle() -> bool:
        held = [await watches_held(w) for w in workers_]
        return sum(held) == 0 and await queue_depth(url, queue) == 0

    await until(idle, timeout_s, "watches still held or queued")


async def queue_depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (not those held by a consumer)."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def drain(
    url: str, queue: str, timeout_s: float = 10.0
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message now in ``queue`` (acknowledged): the dead-letter queue's contents."""
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        async with asyncio.timeout(timeout_s):
            while (message := await declared.get(fail=False, no_ack=True)) is not None:
                taken.append(message)
    return taken
