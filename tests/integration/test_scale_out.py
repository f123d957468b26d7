"""Scale-out: two worker processes on one queue share the watches as competing consumers.

Real RabbitMQ, the simulator over real HTTP, and each worker a ``python -m poller run`` process of
its own with its own ``/metrics``. A watch's checkpoint copy goes back to the shared queue after each
change of state, so a job's watch may move from one worker to the other mid-way: the ids of its
events must not change with the worker.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from tests.contract import end_id
from tests.faults.timelines import create_jobs
from tests.faults.worker_process import WorkerProcess
from tests.integration.conftest import PASSWORD, USER, Names

pytestmark = pytest.mark.integration

JOBS = 60
END_STATES = frozenset({"success", "failure", "cancelled", "expired"})


def config(amqp_url: str, names: Names, base_url: str) -> dict[str, Any]:
    return {
        "amqp_url": amqp_url,
        "watch_queue": names.watch_queue,
        "dead_letter_queue": names.dead_letter_queue,
        "events_exchange": names.events_exchange,
        "poll_interval_min": 0.1,
        "poll_interval_max": 0.5,
        # A small prefetch: neither worker can take the whole burst before the other asks.
        "max_watches": 10,
        "log_format": "json",
        "clusters": {"c1": {"url": base_url, "username": USER, "password": PASSWORD}},
    }


def is_final(routing_key: str) -> bool:
    kind, _, state = routing_key.split(".", 2)
    return kind == "watch" or (kind == "job" and state in END_STATES)


def metric(samples: dict[str, float], name: str) -> float:
    """Sum of every sample of ``name``, whatever its labels."""
    return sum(v for k, v in samples.items() if k.split("{", 1)[0] == name)


@pytest.mark.timeout(180)
async def test_two_workers_share_the_watches_and_agree_on_every_final_event(
    sim, names, amqp_url, subscribe, publish, tmp_path: Path
) -> None:
    """Both workers poll and publish; each of 60 jobs ends once, under one ce-id, none lost."""
    simulator, base_url = sim
    workers = [
        WorkerProcess(tmp_path, f"worker{i}", config(amqp_url, names, base_url)).start()
        for i in range(2)
    ]
    try:
        await asyncio.gather(*(w.wait_ready() for w in workers))
        events, _ = await subscribe(names.events_exchange, "#")
        planned = create_jobs(
            simulator, JOBS, random.Random(7), running_after_s=(0.2, 0.8), runs_for_s=(0.5, 2.5)
        )
        for job in planned:
            await publish(names.watch_queue, {"uuid": job.uuid, "cluster": "c1"})

        def all_ended(messages: list[Any]) -> bool:
            ended = {m.headers["ce-subject"] for m in messages if is_final(m.routing_key)}
            return len(ended) == JOBS

        await events.wait_for(all_ended, timeout=90)
        await asyncio.sleep(1.0)  # room for a late duplicate to show itself
        samples = [await w.metrics() for w in workers]
    finally:
        for w in workers:
            w.terminate()
        codes = [await w.wait_exit(15) for w in workers]

    by_job: dict[str, list[Any]] = {}
    for m in events.messages:
        by_job.setdefault(str(m.headers["ce-subject"]), []).append(m)
    for job in planned:
        seen = by_job[job.uuid]
        finals = [m for m in seen if is_final(m.routing_key)]
        assert {m.routing_key for m in finals} == {f"job.c1.{job.final}"}, job
        assert {m.headers["ce-id"] for m in finals} == {end_id("c1", job.uuid, job.final)}, job
    for w, s in zip(workers, samples, strict=True):
        assert metric(s, "ontap_poller_events_published_total") > 0, f"{w.name} published nothing"
        assert metric(s, "ontap_poller_ontap_requests_total") > 0, f"{w.name} never polled"
        assert w.problems() == []
    assert codes == [0, 0]
