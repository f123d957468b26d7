"""SIGTERM or SIGINT: the worker exits 0 within 10 s, leaving unfinished watches to the broker."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.faults.conftest import cluster_table, queue_depth, settled, worker_config
from tests.faults.test_broker_outage import assert_complete
from tests.faults.timelines import create_jobs

pytestmark = pytest.mark.faults


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
async def test_a_stop_signal_exits_0_and_another_worker_finishes_the_watches(
    broker, names, sim, workers, events, publish, signal_name
) -> None:
    """20 running jobs, then SIGTERM (or Ctrl-C's SIGINT): exit status 0 in 10 s, unfinished
    requests back, then all end."""
    simulator, base_url = sim
    config = worker_config(broker, names, clusters={"c1": cluster_table(base_url)})
    first = workers(config, name="first")
    await first.wait_ready()
    jobs = create_jobs(simulator, 20, random.Random(8), runs_for_s=(10.0, 16.0), failure_rate=0.5)
    for job in jobs:
        await publish(names.watch_queue, {"uuid": job.uuid})
    await events.wait_for(
        lambda es: len({e.subject for e in es if e.routing_key == "job.c1.running"}) == len(jobs),
        timeout_s=60,
    )

    stop = first.terminate if signal_name == "SIGTERM" else first.interrupt
    stop()
    # The contract's bound (INTERFACE §6), not a speed measurement: 10 s is ample.
    code = await first.wait_exit(10)
    assert code == 0, f"exit status {code} on {signal_name}, not 0: {first.output()[-1500:]}"
    await asyncio.sleep(0.5)  # the last events it published reach the test's queue
    unfinished = len(jobs) - len(events.finals())
    assert unfinished >= 10, "too few jobs were still running to test anything"
    # Unfinished watches were left to the broker, not acknowledged.
    assert await queue_depth(broker.url, names.watch_queue) >= unfinished
    signals = [r.get("signal") for r in first.records() if r.get("event") == "worker.signal"]
    assert signals == [signal_name]
    assert first.log_events()[-1] == "worker.stopped"
    assert first.problems() == []

    second = workers(config, name="second")
    await second.wait_ready()
    await events.wait_for(lambda _: len(events.finals()) == len(jobs), timeout_s=90)
    await settled([second], broker.url, names.watch_queue)
    assert_complete(events, jobs)
    assert second.problems() == []
