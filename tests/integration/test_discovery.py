"""Every job of a cluster, across worker processes: one discoverer at a time, a takeover on SIGKILL.

Two worker processes discover the same cluster, each with an ONTAP user of its own, so that the
simulator tells which one reads it. Real RabbitMQ (the lease is a single-active-consumer queue on
it), the simulator over real HTTP, and the workers as ``python -m poller run`` processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from poller.amqp import delete_queues
from poller.simulator import Simulator, running_simulator
from tests.contract import end_id
from tests.faults.worker_process import WorkerProcess
from tests.integration.conftest import PASSWORD, USER, Names

pytestmark = pytest.mark.integration

USERS = {"w1": PASSWORD, "w2": PASSWORD}


def ends_after(seconds: float, state: str = "success") -> list[dict[str, object]]:
    return [
        {"after": 0, "state": "running", "message": "Working"},
        {"after": seconds, "state": state, "message": "Done"},
    ]


def config(
    amqp_url: str, names: Names, base_url: str, user: str, *, discover: bool
) -> dict[str, Any]:
    return {
        "amqp_url": amqp_url,
        "watch_queue": names.watch_queue,
        "dead_letter_queue": names.dead_letter_queue,
        "events_exchange": names.events_exchange,
        "poll_interval_min": 0.2,
        "poll_interval_max": 1.0,
        "log_format": "json",
        "clusters": {
            "c1": {"url": base_url, "username": user, "password": PASSWORD, "discover": discover}
        },
    }


@pytest.fixture
async def users_sim() -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(username=USER, password=PASSWORD, users=USERS)
    async with running_simulator(sim) as base_url:
        yield sim, base_url


@pytest.fixture
async def lease_cleanup(amqp_url: str, names: Names) -> AsyncIterator[None]:
    yield
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await delete_queues(connection, [f"{names.watch_queue}.discover.c1"])


def calls_by(sim: Simulator, user: str) -> int:
    stats = sim.stats.by_user.get(user)
    return stats.requests if stats is not None else 0


def ends_of(messages: list[Any], job: str) -> list[Any]:
    return [
        m
        for m in messages
        if m.headers["ce-subject"] == job and m.routing_key.rsplit(".", 1)[-1] == "success"
    ]


@pytest.mark.timeout(150)
async def test_one_worker_discovers_and_another_takes_over_after_a_sigkill(
    users_sim, names, amqp_url, subscribe, lease_cleanup, tmp_path: Path
) -> None:
    """One discoverer reads the cluster; killed, the other publishes the next end within 15 s."""
    sim, base_url = users_sim
    before = sim.create_job(timeline=ends_after(0.5))
    await asyncio.sleep(1.0)  # `before` ended before any worker started
    events, _ = await subscribe(names.events_exchange, "#")
    workers = {
        user: WorkerProcess(
            tmp_path, user, config(amqp_url, names, base_url, user, discover=True)
        ).start()
        for user in USERS
    }
    try:
        await asyncio.gather(*(w.wait_ready() for w in workers.values()))
        await events.wait_for(lambda ms: len(ends_of(ms, before)) >= 1, timeout=20)
        await asyncio.sleep(2.0)  # several ticks: the one discoverer keeps reading alone

        active = [u for u in USERS if calls_by(sim, u) > 0]
        assert len(active) == 1, {u: calls_by(sim, u) for u in USERS}
        (first,) = active
        (second,) = set(USERS) - {first}
        assert (await workers[first].metrics())['ontap_poller_discoverer{cluster="c1"}'] == 1
        assert (await workers[second].metrics())['ontap_poller_discoverer{cluster="c1"}'] == 0

        workers[first].kill()
        assert await workers[first].wait_exit(10) == -9
        killed_at = time.monotonic()
        after = sim.create_job(timeline=ends_after(1.0))
        await events.wait_for(lambda ms: len(ends_of(ms, after)) >= 1, timeout=30)
        took = time.monotonic() - killed_at
        survivor = await workers[second].metrics()
    finally:
        for w in workers.values():
            w.terminate()
        codes = {u: await w.wait_exit(15) for u, w in workers.items()}

    assert took < 15, f"the next end arrived {took:.1f} s after the kill"
    assert calls_by(sim, second) > 0
    assert survivor['ontap_poller_discoverer{cluster="c1"}'] == 1
    assert survivor['ontap_poller_jobs_discovered_total{cluster="c1"}'] >= 1
    assert '"event": "discovery.active"' in workers[second].output()
    # The end from before the start: published, under the formula's id, by however many workers.
    assert {m.headers["ce-id"] for m in ends_of(events.messages, before)} == {
        end_id("c1", before, "success")
    }
    assert {m.headers["ce-id"] for m in ends_of(events.messages, after)} == {
        end_id("c1", after, "success")
    }
    assert workers[second].problems() == []
    assert codes[second] == 0


@pytest.mark.timeout(60)
async def test_without_discover_unwatched_jobs_are_never_published(
    users_sim, names, amqp_url, subscribe, publish, tmp_path: Path
) -> None:
    """discover = false: running and ended jobs nobody watches stay unpublished; a watched one is."""
    sim, base_url = users_sim
    for seconds in (0.3, 1.0, 30.0):
        sim.create_job(timeline=ends_after(seconds))
    events, _ = await subscribe(names.events_exchange, "#")
    worker = WorkerProcess(
        tmp_path, "w1", config(amqp_url, names, base_url, "w1", discover=False)
    ).start()
    try:
        await worker.wait_ready()
        await asyncio.sleep(1.5)
        assert events.messages == []
        assert calls_by(sim, "w1") == 0  # nothing watched, nothing discovered: no call at all
        watched = sim.create_job(timeline=ends_after(1.0))
        await publish(names.watch_queue, {"uuid": watched, "cluster": "c1"})
        await events.wait_for(lambda ms: len(ends_of(ms, watched)) == 1, timeout=20)
        await asyncio.sleep(1.0)
    finally:
        worker.terminate()
        code = await worker.wait_exit(15)

    assert {m.headers["ce-subject"] for m in events.messages} == {watched}
    assert code == 0
