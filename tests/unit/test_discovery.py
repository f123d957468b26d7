"""Discovery: every job of a cluster published, watched or not, from the same feed."""

from __future__ import annotations

import asyncio

from tests.contract import end_id, event_id
from tests.rig import cluster_rig

RUNNING = [{"after": 0, "state": "running", "message": "Working"}]


def ends_after(seconds: float, state: str = "success") -> list[dict[str, object]]:
    return [*RUNNING, {"after": seconds, "state": state, "message": "Done"}]


async def test_taking_over_announces_the_active_jobs_and_the_ends_ontap_still_holds() -> None:
    """Active jobs, and ends within the purge window, each once; a purged job is not announced."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.2) as rig:
        purged = rig.sim.create_job(timeline=ends_after(1))
        rig.clock.advance(400)  # ended 399 s ago: ONTAP has deleted it
        ended = rig.sim.create_job(timeline=ends_after(1, "failure"))
        running = rig.sim.create_job(timeline=RUNNING)
        rig.clock.advance(60)  # `ended` ended 59 s ago, within the window

        rig.cluster.scheduler.discover(True)
        await rig.until(lambda: len(rig.outbox.events) == 2)
        await asyncio.sleep(0.3)  # several more ticks: nothing is announced twice

    ids = {e.headers["ce-subject"]: e.message_id for e in rig.outbox.events}
    assert ids == {
        ended: end_id("c1", ended, "failure"),
        running: event_id("c1", running, 0, "running"),
    }
    assert purged not in ids
    assert rig.metrics.jobs_discovered.labels("c1")._value.get() == 2


async def test_a_discovered_job_is_published_through_its_changes_to_its_end() -> None:
    """No watch at all: first sighting, each change, and one end."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        rig.cluster.scheduler.discover(True)
        job = rig.sim.create_job(
            timeline=[
                {"after": 0, "state": "queued"},
                {"after": 1, "state": "running"},
                {"after": 2, "state": "success"},
            ]
        )
        await rig.until(lambda: len(rig.outbox.events) == 1)
        rig.clock.advance(1)
        await rig.until(lambda: len(rig.outbox.events) == 2)
        rig.clock.advance(1)
        await rig.until(lambda: len(rig.outbox.events) == 3)
        await asyncio.sleep(0.3)

    assert rig.outbox.routing_keys() == ["job.c1.queued", "job.c1.running", "job.c1.success"]
    assert rig.outbox.events[-1].message_id == end_id("c1", job, "success")
    assert rig.outbox.checkpoints == []  # nothing to re-enqueue: nobody watches it
    assert not rig.cluster.dispatcher.holds(job)  # forgotten once ended


async def test_a_watch_of_a_discovered_job_gets_reply_to_and_costs_no_read() -> None:
    """Watching a job discovery already follows: replies and the end, and no read by uuid."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        rig.cluster.scheduler.discover(True)
        job = rig.sim.create_job(timeline=ends_after(2))
        await rig.until(lambda: rig.outbox.routing_keys() == ["job.c1.running"])
        watch = rig.watch(job, reply_to="mine", correlation_id="w")
        rig.admit(watch)
        await rig.until(lambda: len(rig.outbox.replies) == 1)  # the latest event, at once
        rig.clock.advance(2)
        await rig.until(lambda: rig.finished(job))

    assert rig.outbox.routing_keys() == ["job.c1.running", "job.c1.success"]
    assert [(to, e.routing_key) for to, e in rig.outbox.replies] == [
        ("mine", "job.c1.running"),
        ("mine", "job.c1.success"),
    ]
    assert rig.transport.by_uuid() == 0


async def test_standing_down_stops_publishing_unwatched_jobs() -> None:
    """The lease went to another worker: this one publishes nothing more for unwatched jobs."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        rig.cluster.scheduler.discover(True)
        job = rig.sim.create_job(timeline=ends_after(2))
        await rig.until(lambda: rig.outbox.routing_keys() == ["job.c1.running"])
        rig.cluster.scheduler.discover(False)
        calls = len(rig.transport.requests)
        rig.clock.advance(2)
        await asyncio.sleep(0.4)

    assert rig.outbox.routing_keys() == ["job.c1.running"]
    assert not rig.cluster.dispatcher.holds(job)
    assert len(rig.transport.requests) <= calls + 2  # the feed stops with nobody to serve
