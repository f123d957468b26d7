"""The change feed end to end: a worker, a real RabbitMQ, the simulator over real HTTP.

The simulator's cluster clock is set apart from the worker's in most tests, as real clusters'
clocks are; the worker must find every end from the cluster's own ``Date`` header.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from poller import __version__
from poller.simulator import Simulator, running_simulator
from tests.contract import end_id
from tests.integration.conftest import PASSWORD, USER, cluster, make_settings

pytestmark = pytest.mark.integration


def ends_after(seconds: float, state: str = "success") -> list[dict[str, Any]]:
    return [
        {"after": 0, "state": "running", "message": "Working"},
        {"after": seconds, "state": state, "message": "Done"},
    ]


async def serve(**options: Any) -> AsyncIterator[tuple[Simulator, str]]:
    sim = Simulator(username=USER, password=PASSWORD, **options)
    async with running_simulator(sim) as base_url:
        yield sim, base_url


@pytest.fixture(params=[-420.0, 420.0], ids=["cluster-7-min-behind", "cluster-7-min-ahead"])
async def skewed(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Simulator, str]]:
    async for served in serve(clock_offset_s=request.param, timezone="America/New_York"):
        yield served


async def test_ends_arrive_within_about_a_tick_whatever_poll_interval_max_is(
    skewed, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """poll_interval_max 30 s, a tick of 0.2 s, a skewed clock: each end within about a tick."""
    sim, base_url = skewed
    settings = make_settings(
        amqp_url, names, {"c1": cluster(base_url)}, poll_interval_min=0.2, poll_interval_max=30.0
    )
    await start_worker(settings)
    events, _ = await subscribe(names.events_exchange, "#")
    jobs = [sim.create_job(timeline=ends_after(2.0 + i * 0.7, "failure")) for i in range(4)]
    for job in jobs:
        await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})

    await events.wait_for(lambda ms: sum(m.routing_key == "job.c1.failure" for m in ms) == 4)

    lags = []
    for job in jobs:
        (message,) = [
            m
            for m in events.messages
            if m.headers["ce-subject"] == job and m.routing_key == "job.c1.failure"
        ]
        assert message.headers["ce-id"] == end_id("c1", job, "failure")
        found = sim.transitions(job)
        assert found is not None
        ended_at = found[1][-1].at  # the simulator's own clock, not the skewed cluster clock
        seen_at = datetime.fromisoformat(str(message.headers["ce-time"])).timestamp()
        lags.append(seen_at - ended_at)
    # About a tick (0.2 s) and one call; far below poll_interval_max (30 s).
    assert max(lags) < 1.0, lags
    # The ends came from the feed's end_time windows, not from reads job by job.
    assert sim.stats.by_query.get("end_time", 0) > 0
    assert sim.stats.single == 0


async def test_a_cluster_that_refuses_the_filters_is_read_by_uuid(
    names, amqp_url, start_worker, subscribe, publish
) -> None:
    """refuse_filters: every watch still ends, from uuid batches; said once, metric at 0."""
    async for sim, base_url in serve(refuse_filters=True):
        settings = make_settings(amqp_url, names, {"c1": cluster(base_url)})
        with capture_logs() as logs:
            await start_worker(settings)
            events, _ = await subscribe(names.events_exchange, "#")
            jobs = [sim.create_job(timeline=ends_after(1.0)) for _ in range(3)]
            for job in jobs:
                await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
            await events.wait_for(
                lambda ms: sum(m.routing_key == "job.c1.success" for m in ms) == 3
            )
        refused = [e for e in logs if e["event"] == "feed.filters_refused"]
        assert len(refused) == 1
        assert sim.stats.by_query.get("uuid", 0) > 0
        assert sim.stats.by_status.get("400", 0) >= 1


async def test_the_feed_follows_every_page(
    names, amqp_url, start_worker, subscribe, publish
) -> None:
    """A cluster that answers three records a page: ten running jobs, all accounted for, all end."""
    async for sim, base_url in serve(max_page=3):
        settings = make_settings(amqp_url, names, {"c1": cluster(base_url)}, poll_interval_max=0.4)
        await start_worker(settings)
        events, _ = await subscribe(names.events_exchange, "#")
        jobs = [sim.create_job(timeline=ends_after(3.0)) for _ in range(10)]
        for job in jobs:
            await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
        await events.wait_for(lambda ms: sum(m.routing_key == "job.c1.running" for m in ms) == 10)
        batches_before = sim.stats.by_query.get("uuid", 0) + sim.stats.single
        await events.wait_for(lambda ms: sum(m.routing_key == "job.c1.success" for m in ms) == 10)
        # After the first sightings, the feed's pages told every change: no job was read by uuid.
        assert sim.stats.by_query.get("uuid", 0) + sim.stats.single == batches_before
        assert sim.stats.by_query.get("state", 0) >= 4  # several pages per active round


async def test_every_call_names_the_poller(
    names, amqp_url, start_worker, subscribe, publish
) -> None:
    """X-Dot-Client-App: ontap-job-poller/<version> on every request the simulator counted."""
    async for sim, base_url in serve():
        await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
        events, _ = await subscribe(names.events_exchange, "#")
        job = sim.create_job(timeline=ends_after(1.0))
        await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
        await publish(
            names.watch_queue, {"uuid": "00000000-0000-0000-0000-0000000000ee", "cluster": "c1"}
        )
        await events.wait_keys("job.c1.success", "watch.c1.not_found")
        await asyncio.sleep(0.5)
        assert sim.stats.requests > 3
        assert dict(sim.stats.by_client_app) == {
            f"ontap-job-poller/{__version__}": sim.stats.requests
        }
