"""A RabbitMQ cluster of three private nodes: the node a worker uses, and that leads the watch
queue, is killed with SIGKILL mid-run; the worker and a subscriber fail over to another node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from poller.amqp import connect
from tests.contract import end_id
from tests.faults.conftest import (
    CHECKPOINT_INTERVAL_S,
    EventLog,
    Names,
    cluster_table,
    collect,
    settled,
)
from tests.faults.private_broker import BrokerUnavailable
from tests.faults.private_cluster import PrivateCluster
from tests.faults.timelines import create_jobs

pytestmark = pytest.mark.faults

JOBS = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateCluster]:
    """Three clustered private nodes (never the machine's shared broker); all killed at the end."""
    nodes: PrivateCluster | None = None
    problem = ""
    try:
        nodes = PrivateCluster(tmp_path_factory.mktemp("rabbitmq-cluster"), size=3)
        started = time.monotonic()
        nodes.start()
        print(f"cluster of 3 formed in {time.monotonic() - started:.1f} s")
    except BrokerUnavailable as exc:
        problem = str(exc)
    if nodes is None or problem:
        if nodes is not None:
            nodes.close()
        pytest.fail(problem, pytrace=False)  # never a skip: a missing broker is a failure
    yield nodes
    nodes.close()


@pytest.fixture
def cluster_names() -> Names:
    """Queue and exchange names of this test alone (the cluster is thrown away after it)."""
    token = secrets.token_hex(4)
    return Names(
        *(f"cluster.{token}.{part}" for part in ("watch", "dead", "events", "seen", "replies"))
    )


@pytest.fixture
async def cluster_events(cluster: PrivateCluster, cluster_names: Names) -> AsyncIterator[EventLog]:
    """Every event of the test's exchange, received through ``poller.amqp.connect`` with every
    node listed, so on the first node too: the subscriber has to fail over as well."""

    def through_poller(urls: str) -> object:
        return connect(urls, name="cluster test subscriber")

    log, connection = await collect(
        ",".join(cluster.urls),
        cluster_names.events_queue,
        cluster_names.events_exchange,
        connect=through_poller,  # type: ignore[arg-type]
    )
    yield log
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 10)


async def publish_requests(url: str, queue: str, bodies: list[dict[str, str]]) -> None:
    """Publish watch requests, persistent and confirmed, through one node."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for body in bodies:
            message = aio_pika.Message(
                json.dumps(body).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await channel.default_exchange.publish(message, queue, mandatory=True, timeout=30)


def connected_nodes(records: list[dict[str, object]]) -> list[str]:
    """The nodes a worker used, in order (``worker.started`` and ``broker.reconnected`` say)."""
    said = {"worker.started", "broker.reconnected"}
    return [str(r["node"]) for r in records if r.get("event") in said]


@pytest.mark.timeout(300)
async def test_sigkill_of_the_workers_node_and_queue_leader_loses_no_end(
    cluster, cluster_names, sim, workers, cluster_events
) -> None:
    """SIGKILL of the node the worker uses and the watch queue's leader: every end arrives once
    or more, duplicates share the end's ce-id, and the worker fails over to another node."""
    names, events = cluster_names, cluster_events
    simulator, base_url = sim
    first, *others = cluster.nodes
    config = {
        "amqp_url": cluster.urls,  # a TOML array: the worker tries the first node first
        "watch_queue": names.watch_queue,
        "dead_letter_queue": names.dead_letter_queue,
        "events_exchange": names.events_exchange,
        "poll_interval_min": 0.2,
        "poll_interval_max": 1.0,
        "checkpoint_interval": CHECKPOINT_INTERVAL_S,
        "log_format": "json",
        "clusters": {"c1": cluster_table(base_url)},
    }
    worker = workers(config, name="worker")
    await worker.wait_ready()
    assert connected_nodes(worker.records()) == [f"amqp://127.0.0.1:{first.port}/"]
    # Declared while connected to the first node: RabbitMQ 3.10 puts the leader there.
    assert cluster.leader(names.watch_queue, via=others[0]) == first.nodename

    jobs = create_jobs(simulator, JOBS, random.Random(60), runs_for_s=(6.0, 14.0))
    await publish_requests(others[0].url, names.watch_queue, [{"uuid": j.uuid} for j in jobs])
    await events.wait_for(
        lambda es: len({e.subject for e in es if e.routing_key == "job.c1.running"}) >= JOBS // 2,
        timeout_s=60,
    )
    killed_at = time.monotonic()
    await asyncio.to_thread(first.kill)
    in_flight = JOBS - len(events.finals())
    assert in_flight >= JOBS // 2, f"only {in_flight} jobs were in flight at the kill"

    async def failed_over() -> bool:
        return len(connected_nodes(worker.records())) >= 2

    while not await failed_over():
        assert time.monotonic() - killed_at < 60, "the worker did not connect to another node"
        await asyncio.sleep(0.1)
    failover_s = time.monotonic() - killed_at
    await events.wait_for(lambda _: len(events.finals()) == JOBS, timeout_s=150)
    await settled([worker], others[0].url, names.watch_queue)
    ended_s = time.monotonic() - killed_at

    finals = events.finals()
    for job in jobs:
        assert {e.routing_key for e in finals[job.uuid]} == {f"job.c1.{job.final}"}, job
        assert {e.ce_id for e in finals[job.uuid]} == {end_id("c1", job.uuid, job.final)}, job
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in events.events:
        ids[(e.subject, e.routing_key)].add(e.ce_id)
    assert {k: v for k, v in ids.items() if len(v) > 1} == {}, "duplicates with different ce-ids"
    new_node = connected_nodes(worker.records())[-1]
    assert new_node in {f"amqp://127.0.0.1:{node.port}/" for node in others}
    assert cluster.leader(names.watch_queue, via=others[0]) != first.nodename
    samples = await worker.metrics()
    assert samples["ontap_poller_broker_reconnects_total"] >= 1
    assert worker.running, "the worker exited"
    assert worker.problems() == []
    print(
        f"in flight at the kill: {in_flight}; worker on {new_node} {failover_s:.1f} s after the "
        f"kill; every end {ended_s:.1f} s after it; events: {len(events.events)}"
    )
