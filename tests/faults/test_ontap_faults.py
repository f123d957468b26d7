"""ONTAP misbehaving: 5xx, 429/503 with Retry-After, latency and dropped connections are retried;
refusals and a cluster unreachable until the deadline end the watch with ``watch.<cluster>.error``.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from poller.simulator import FaultPlan, Simulator, running_simulator
from tests.faults.conftest import PASSWORD, USER, cluster_table, worker_config
from tests.faults.private_broker import free_port
from tests.faults.timelines import create_jobs
from tests.schemas import validate

pytestmark = pytest.mark.faults


@pytest.mark.timeout(240)
async def test_every_job_ends_right_through_transient_faults(
    broker, names, sim, workers, events, publish
) -> None:
    """30 jobs, 30% 5xx, some 429/503, 50-200 ms latency, dropped connections: all end as planned."""
    simulator, base_url = sim
    simulator.faults = FaultPlan(
        error_rate=0.3,
        error_status=502,
        throttle_rate=0.1,
        retry_after_s=1,
        drop_rate=0.05,
        latency_ms=(50, 200),
        seed=5,
    )
    # One simulated cluster under two names: read in batches, and one GET per job (many calls,
    # so that every kind of fault is drawn whatever the timing).
    clusters = {"c1": cluster_table(base_url), "c2": cluster_table(base_url, batch=False)}
    worker = workers(worker_config(broker, names, clusters=clusters))
    await worker.wait_ready()
    jobs = create_jobs(simulator, 30, random.Random(5), runs_for_s=(2.0, 6.0))
    cluster_of = {j.uuid: ("c1", "c2")[i % 2] for i, j in enumerate(jobs)}

    await asyncio.gather(
        *(publish(names.watch_queue, {"uuid": j.uuid, "cluster": cluster_of[j.uuid]}) for j in jobs)
    )
    await events.wait_for(lambda _: len(events.finals()) == len(jobs), timeout_s=180)

    finals = events.finals()
    for job in jobs:
        expected = f"job.{cluster_of[job.uuid]}.{job.final}"
        assert {e.routing_key for e in finals[job.uuid]} == {expected}, job
        assert finals[job.uuid][0].body["state"] == job.final
    stats = simulator.stats.as_json()
    assert stats["collection"] > 0 and stats["single"] > 0
    for status in ("502", "429", "503", "dropped"):
        assert stats["by_status"].get(status, 0) > 0, f"no {status} was injected: {stats}"
    samples = await worker.metrics()
    transient = sum(
        v
        for k, v in samples.items()
        if k.startswith("ontap_poller_ontap_requests") and "transient" in k
    )
    assert transient > 0
    assert worker.problems() == []


@pytest.mark.timeout(180)
async def test_refusals_and_an_unreachable_cluster_end_watches_with_error(
    broker, names, workers, events, publish
) -> None:
    """401 and 403 carry ONTAP's error body; a cluster down until the deadline ends as error."""
    refused = Simulator(username=USER, password=PASSWORD)
    forbidden = Simulator(username=USER, password=PASSWORD, faults=FaultPlan(status_override=403))
    job = "1cd8a442-86d1-11e0-ae1c-123478563412"
    for s in (refused, forbidden):
        s.create_job(uuid=job, timeline=[{"after": 0, "state": "running"}])
    down_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running_simulator(refused) as url401, running_simulator(forbidden) as url403:
        clusters = {
            "c401": cluster_table(url401, password="not-the-password"),
            "c403": cluster_table(url403),
            "down": cluster_table(down_url),
        }
        worker = workers(worker_config(broker, names, clusters=clusters))
        await worker.wait_ready()
        for name in clusters:
            await publish(
                names.watch_queue, {"uuid": job, "cluster": name, "timeout": 2}, correlation_id=name
            )
        await events.wait_for(lambda es: len(es) >= 3, timeout_s=120)

    by_cluster = {e.headers["ce-cluster"]: e for e in events.events}
    assert sorted(e.routing_key for e in events.events) == [
        "watch.c401.error",
        "watch.c403.error",
        "watch.down.error",
    ]
    for name, event in by_cluster.items():
        validate("error.json", event.body)
        assert event.correlation_id == name
    not_authorized = {"message": "not authorized for that command", "code": "6"}
    assert by_cluster["c401"].body == {"error": not_authorized}
    assert by_cluster["c403"].body == {"error": not_authorized}
    assert by_cluster["down"].body["error"]["message"]  # says why: the connection failed
    assert refused.stats.as_json()["by_status"] == {"401": refused.stats.requests}
    assert worker.problems() == []
