"""Malformed watch requests are dead-lettered unchanged, with the reason; nothing else suffers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import aio_pika
import pytest

from poller.amqp.broker import DELIVERY_LIMIT
from poller.simulator import Simulator, running_simulator
from tests.faults.conftest import (
    PASSWORD,
    USER,
    cluster_table,
    drain,
    queue_depth,
    until,
    worker_config,
)

pytestmark = pytest.mark.faults

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"


def bad_requests(other_cluster_url: str) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(what is wrong, body, extra AMQP properties) of every kind of invalid request."""
    valid = {"uuid": JOB, "cluster": "c1"}

    def body(**fields: Any) -> bytes:
        return json.dumps(fields).encode()

    return [
        ("not JSON", b"{uuid: nope", {}),
        ("empty body", b"", {}),
        ("JSON array", b'[{"uuid": "1cd8a442-86d1-11e0-ae1c-123478563412"}]', {}),
        ("no uuid", body(cluster="c1"), {}),
        ("bad uuid", body(uuid="1cd8a442-86d1-11e0-ae1c", cluster="c1"), {}),
        ("uuid not a string", body(uuid=12345, cluster="c1"), {}),
        ("unknown cluster", body(uuid=JOB, cluster="c9"), {}),
        ("URL as cluster", body(uuid=JOB, cluster=other_cluster_url), {}),
        ("host:port as cluster", body(uuid=JOB, cluster=other_cluster_url.split("//")[1]), {}),
        ("path as cluster", body(uuid=JOB, cluster="c1/../../api/cluster/jobs"), {}),
        ("over 64 KiB", body(**valid, pad="x" * (64 * 1024)), {}),
        ("gzip encoding", body(**valid), {"content_encoding": "gzip"}),
        ("not JSON content type", body(**valid), {"content_type": "text/plain"}),
        ("nested too deeply", b'{"uuid": ' + b"[" * 20000 + b"]" * 20000 + b"}", {}),
        ("two uuids", body(uuid=JOB, job={"uuid": "2cd8a442-86d1-11e0-ae1c-123478563412"}), {}),
        ("forged checkpoint", body(**valid), {"headers": {"x-poller-checkpoint": "{not json"}}),
    ]


@pytest.mark.timeout(180)
async def test_bad_requests_are_dead_lettered_unchanged_and_a_good_one_still_works(
    broker, names, sim, workers, events, publish
) -> None:
    """Each bad request lands once in the dead-letter queue as sent, plus x-poller-error."""
    simulator, base_url = sim
    job = simulator.create_job(
        uuid=JOB, timeline=[{"after": 0, "state": "running"}, {"after": 1, "state": "success"}]
    )
    other = Simulator(username=USER, password=PASSWORD)  # a cluster the worker is not given
    other.create_job(uuid=JOB)
    async with running_simulator(other) as other_url:
        worker = workers(worker_config(broker, names, clusters={"c1": cluster_table(base_url)}))
        await worker.wait_ready()
        cases = bad_requests(other_url)
        for i, (_, raw, extra) in enumerate(cases):
            headers = {
                "x-case": i,
                "x-text": "héllo",
                "x-float": 1.5,
                "x-bool": True,
                "x-list": [1, "two", {"three": 3}],
                "x-decimal": Decimal("1.25"),
                "x-none": None,
                **extra.pop("headers", {}),
            }
            await publish(
                names.watch_queue,
                raw,
                headers=headers,
                message_id=f"bad-{i}",
                correlation_id=f"corr-{i}",
                reply_to="nowhere",
                type="watch-request",
                app_id="some-service",
                priority=3,
                timestamp=dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC),
                **extra,
            )
        await publish(names.watch_queue, {"uuid": job, "cluster": "c1"}, message_id="good")
        await events.wait_for(
            lambda es: any(e.routing_key == "job.c1.success" for e in es), timeout_s=60
        )

        async def all_dead_lettered() -> bool:
            return await queue_depth(broker.url, names.dead_letter_queue) >= len(cases)

        await until(all_dead_lettered, 60, "bad requests dead-lettered")
        await asyncio.sleep(2)  # a looping poison message would show up again by now
        dead = await drain(broker.url, names.dead_letter_queue)
        assert other.stats.requests == 0, "the worker called a host it was not configured with"

    assert sorted(m.message_id or "" for m in dead) == sorted(f"bad-{i}" for i in range(len(cases)))
    for message in dead:
        i = int((message.message_id or "").removeprefix("bad-"))
        what, raw, extra = cases[i]
        assert message.body == raw, what
        reason = message.headers.pop("x-poller-error")
        assert isinstance(reason, str) and reason, what
        assert message.headers["x-case"] == i
        assert message.headers["x-text"] == "héllo"
        assert message.headers["x-list"] == [1, "two", {"three": 3}]
        assert message.headers["x-decimal"] == Decimal("1.25")
        assert message.correlation_id == f"corr-{i}"
        assert message.reply_to == "nowhere"
        assert message.type == "watch-request"
        assert message.app_id == "some-service"
        assert message.priority == 3
        assert message.timestamp == dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC)
        assert message.content_type == extra.get("content_type", "application/json")
        assert message.content_encoding == extra.get("content_encoding")
        assert message.delivery_mode == 2
    assert [e.routing_key for e in events.events] == ["job.c1.running", "job.c1.success"]
    assert await queue_depth(broker.url, names.watch_queue) == 0
    assert worker.running
    samples = await worker.metrics()
    dead_lettered = sum(
        v for k, v in samples.items() if k.startswith("ontap_poller_requests_dead_lettered_total")
    )
    assert dead_lettered == len(cases)
    assert worker.problems() == []


@pytest.mark.timeout(120)
async def test_a_request_that_cannot_be_dead_lettered_is_retried_a_bounded_number_of_times(
    broker, names, sim, workers, events, publish
) -> None:
    """Dead-letter queue deleted: the bad request is handed back, retried, and stops at the limit."""
    simulator, base_url = sim
    worker = workers(worker_config(broker, names, clusters={"c1": cluster_table(base_url)}))
    await worker.wait_ready()
    connection = await aio_pika.connect(broker.url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(names.dead_letter_queue)

    await publish(names.watch_queue, b"not json", message_id="poison")

    def failures() -> int:
        return worker.log_events().count("request.dead_letter_failed")

    async def gave_up() -> bool:
        return failures() > DELIVERY_LIMIT and await queue_depth(broker.url, names.watch_queue) == 0

    await until(gave_up, 60, "the broker did not stop redelivering the poison request")
    await asyncio.sleep(2)
    # The first delivery, then up to the limit's redeliveries (3.10 counts each nack as one).
    assert DELIVERY_LIMIT <= failures() <= DELIVERY_LIMIT + 1
    job = simulator.create_job(timeline=[{"after": 0, "state": "success"}])
    await publish(names.watch_queue, {"uuid": job})  # the worker is fine
    await events.wait_for(lambda es: [e.routing_key for e in es] == ["job.c1.success"], 30)
    assert worker.problems() == []
