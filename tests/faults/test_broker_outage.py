"""Broker outages mid-run: a restart of the node, and a connection dropped on the way.

Workers reconnect; the watches they held come back from the queue and are resumed; deliveries of a
dead channel are neither polled nor acknowledged; events that could not be published are published
later, with the same ids.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import defaultdict

import pytest

from poller.simulator import Simulator, running_simulator
from tests.faults.conftest import (
    PASSWORD,
    USER,
    EventLog,
    cluster_table,
    settled,
    until,
    worker_config,
)
from tests.faults.tcp_proxy import TcpProxy
from tests.faults.timelines import create_jobs

pytestmark = pytest.mark.faults

#: The broker's answer to an acknowledgement of a tag that its channel does not hold.
STALE_ACK = re.compile(r"unknown delivery tag", re.I)


def assert_complete(events: EventLog, jobs) -> None:
    """Each job's final event arrived with its timeline's end state; twins share one ce-id."""
    finals = events.finals()
    for job in jobs:
        assert {e.routing_key for e in finals.get(job.uuid, [])} == {f"job.c1.{job.final}"}, job
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in events.events:
        ids[(e.subject, e.routing_key)].add(e.ce_id)
    assert not {k: v for k, v in ids.items() if len(v) > 1}, "duplicates with different ce-ids"


def ended_at(simulator: Simulator, job: str) -> float:
    """When the simulated job reached its final state (inf if it has not)."""
    found = simulator.transitions(job)
    assert found is not None
    _, transitions = found
    last = transitions[-1]
    return last.at if last.state in ("success", "failure") else float("inf")


@pytest.mark.timeout(240)
async def test_broker_restart_mid_run_loses_nothing(
    broker, broker_log, names, sim, workers, events, publish
) -> None:
    """The node stops and starts again (same data) while 30 jobs run; every job still ends."""
    simulator, base_url = sim
    worker = workers(worker_config(broker, names, clusters={"c1": cluster_table(base_url)}))
    await worker.wait_ready()
    jobs = create_jobs(simulator, 30, random.Random(4), runs_for_s=(6.0, 12.0))
    await asyncio.gather(*(publish(names.watch_queue, {"uuid": j.uuid}) for j in jobs))
    await events.wait_for(
        lambda es: len({e.subject for e in es if e.routing_key == "job.c1.running"}) >= 20,
        timeout_s=60,
    )

    down_at = time.time()
    await asyncio.to_thread(broker.stop)
    await asyncio.sleep(2)  # jobs end meanwhile; their events cannot be published yet
    await asyncio.to_thread(broker.start)
    ended_while_down = sum(1 for j in jobs if down_at <= ended_at(simulator, j.uuid) <= time.time())

    await events.wait_for(lambda _: len(events.finals()) == len(jobs), timeout_s=150)
    await settled([worker], broker.url, names.watch_queue)
    assert_complete(events, jobs)
    assert worker.running, "the worker exited"
    samples = await worker.metrics()
    assert samples["ontap_poller_broker_reconnects_total"] >= 1
    assert "broker.reconnected" in worker.log_events()
    assert worker.problems() == []
    assert not STALE_ACK.search(broker_log())
    assert ended_while_down >= 1, "no job ended while the broker was down"


@pytest.mark.timeout(240)
async def test_a_dropped_connection_stops_polling_its_deliveries(
    broker, broker_log, names, workers, events, publish
) -> None:
    """Worker A's connection is cut and kept down: A stops polling, B resumes A's watches."""
    sims = [Simulator(username=USER, password=PASSWORD) for _ in range(2)]
    rng_seed = 11
    async with running_simulator(sims[0]) as url_a, running_simulator(sims[1]) as url_b:
        proxy = await TcpProxy(broker.port).start()
        try:
            a_config = worker_config(
                broker,
                names,
                amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
                clusters={"c1": cluster_table(url_a)},
            )
            a = workers(a_config, name="a")
            await a.wait_ready()
            # The same jobs on two simulated clusters: each worker's polling is counted apart.
            jobs = create_jobs(sims[0], 20, random.Random(rng_seed), runs_for_s=(12.0, 18.0))
            create_jobs(sims[1], 20, random.Random(rng_seed), runs_for_s=(12.0, 18.0))
            await asyncio.gather(*(publish(names.watch_queue, {"uuid": j.uuid}) for j in jobs))
            await events.wait_for(
                lambda es: len({e.subject for e in es if e.routing_key == "job.c1.running"}) == 20,
                timeout_s=60,
            )
            b = workers(
                worker_config(broker, names, clusters={"c1": cluster_table(url_b)}), name="b"
            )
            await b.wait_ready()

            proxy.cut()
            await asyncio.sleep(3)  # A's last polls finish; its deliveries went back to the queue
            polled_by_a = sims[0].stats.requests
            await asyncio.sleep(5)  # 5 x poll_interval_max: A would have polled by now
            assert sims[0].stats.requests == polled_by_a, "A kept polling a dead channel's watches"
            assert sims[1].stats.requests > 0, "B did not resume A's watches"

            proxy.restore()

            async def a_reconnected() -> bool:
                samples = await a.metrics()
                return samples["ontap_poller_broker_reconnects_total"] >= 1

            await until(a_reconnected, 90, "A did not reconnect")
            await events.wait_for(lambda _: len(events.finals()) == len(jobs), timeout_s=120)
            await settled([a, b], broker.url, names.watch_queue)
        finally:
            await proxy.close()

    assert_complete(events, jobs)
    assert proxy.accepted >= 2  # A did connect again
    for worker in (a, b):
        assert worker.problems() == []
        assert "watch.ack_failed" not in worker.log_events()
    assert not STALE_ACK.search(broker_log())
