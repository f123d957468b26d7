"""Resuming watches: newest history wins, late copies are settled, refused events come again.

Each test runs one cluster's scheduler and dispatcher (``tests.rig``) against the simulator in
process; checkpoint copies come back as the broker would hand them out again.
"""

from __future__ import annotations

import asyncio
import json

from poller.simulator import FaultPlan
from poller.tracking import Progress
from poller.watch import Watch
from tests.contract import end_id, event_id
from tests.fakes import FakeOutbox
from tests.rig import cluster_rig

STEADY = [{"after": 0, "state": "paused", "message": "Waiting"}]


async def test_a_copy_with_more_history_sets_the_jobs_n() -> None:
    """The older twin arrives first; its newer twin's progress wins, so ids follow its lineage."""
    async with cluster_rig(feed=False) as rig:
        job = rig.sim.create_job(timeline=STEADY)
        old, new = rig.watch(job, watch_id="w", saved=1), rig.watch(job, watch_id="w", saved=2)
        rig.admit(old, Progress("queued", 1), resumed=True)
        rig.admit(new, Progress("running", 2), resumed=True)
        await rig.until(lambda: bool(rig.outbox.events))

    assert rig.outbox.routing_keys() == ["job.c1.paused"]
    assert rig.outbox.events[0].message_id == event_id("c1", job, 2, "paused")
    assert old.delivery.acks == 1  # type: ignore[attr-defined] - settled as superseded


async def test_a_copy_with_less_history_does_not_set_it_back() -> None:
    """An older copy joining later leaves the job's progress where it is."""
    async with cluster_rig(feed=False) as rig:
        job = rig.sim.create_job(timeline=STEADY)
        rig.admit(rig.watch(job, watch_id="w1"), Progress("running", 2), resumed=True)
        rig.admit(rig.watch(job, watch_id="w2"), Progress("queued", 1), resumed=True)
        await rig.until(lambda: bool(rig.outbox.events))
    assert rig.outbox.events[0].message_id == event_id("c1", job, 2, "paused")


async def test_a_late_copy_of_an_ended_watch_is_settled_not_read() -> None:
    """Once a watch's end is confirmed, a copy of it is acked: nothing published, nothing read."""
    async with cluster_rig(feed=False) as rig:
        job = rig.sim.create_job(timeline=[{"after": 0, "state": "success"}])
        first = rig.watch(job, watch_id="w1", saved=1)
        rig.admit(first, Progress("running", 1), resumed=True)
        await rig.until(lambda: rig.finished(job))
        calls = len(rig.transport.requests)

        late = rig.watch(job, watch_id="w1", saved=1)
        rig.admit(late, Progress("running", 1), resumed=True)
        await rig.until(lambda: late.delivery.acks == 1)  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)  # several poll intervals

    assert rig.outbox.routing_keys() == ["job.c1.success"]
    assert len(rig.transport.requests) == calls


async def test_an_event_the_broker_refused_is_published_later_with_its_id() -> None:
    """Two refused publishes: the watch stays held, and the end goes out under the same id."""
    outbox = FakeOutbox(failures=2)
    async with cluster_rig(outbox=outbox) as rig:
        job = rig.sim.create_job(timeline=[{"after": 0, "state": "success"}])
        watch = rig.watch(job, saved=1)
        rig.admit(watch, Progress("running", 1), resumed=True)
        await rig.until(lambda: watch.delivery.acks == 1)  # type: ignore[attr-defined]

    assert outbox.attempts == 3
    assert outbox.routing_keys() == ["job.c1.success"]
    assert outbox.events[0].message_id == end_id("c1", job, "success")


async def test_a_deadline_during_a_failing_read_ends_as_error_not_timeout() -> None:
    """The read under way when the deadline passes decides: all its attempts failed, so error."""
    async with cluster_rig(feed=False, delay_s=0.5) as rig:
        rig.sim.faults = FaultPlan(error_rate=1.0, error_status=503)
        job = rig.sim.create_job(timeline=STEADY)
        watch = rig.watch(job, deadline_in_s=0.1)
        rig.admit(watch)
        await rig.until(lambda: watch.delivery.acks == 1)  # type: ignore[attr-defined]

    assert rig.outbox.routing_keys() == ["watch.c1.error"]
    body = json.loads(rig.outbox.events[0].body)
    assert body["error"]["message"] == "simulated failure"


async def test_a_deadline_while_ontap_answers_ends_as_timeout() -> None:
    """The control: ONTAP answering, the job still running at the deadline: timeout, with it."""
    async with cluster_rig() as rig:
        job = rig.sim.create_job(timeline=STEADY)
        watch = rig.watch(job, deadline_in_s=0.3, saved=1)
        rig.admit(watch, Progress("paused", 1), resumed=True)
        await rig.until(lambda: watch.delivery.acks == 1)  # type: ignore[attr-defined]

    assert rig.outbox.routing_keys() == ["watch.c1.timeout"]
    assert json.loads(rig.outbox.events[-1].body)["state"] == "paused"


async def test_a_watch_that_joined_late_is_checkpointed_before_the_next_change() -> None:
    """A fresh request joining a job at n=1 gets a copy saying so before n=1 is published."""
    async with cluster_rig(feed=False) as rig:
        job = rig.sim.create_job(timeline=STEADY)
        rig.admit(rig.watch(job, watch_id="w1", saved=1), Progress("queued", 1), resumed=True)
        rig.admit(rig.watch(job, watch_id="w2", saved=0))
        await rig.until(lambda: bool(rig.outbox.events))

    assert rig.outbox.checkpoints[0]["watch_id"] == "w2"
    assert rig.outbox.checkpoints[0]["changes"] == 1  # caught up on queued, before paused
    assert rig.outbox.events[0].message_id == event_id("c1", job, 1, "paused")


async def test_no_change_is_published_while_a_copy_cannot_catch_up() -> None:
    """If the catch-up copy is refused, a non-final change waits (same id later), held."""
    outbox = FakeOutbox(fail_requeue=True)
    async with cluster_rig(outbox=outbox, feed=False) as rig:
        job = rig.sim.create_job(timeline=STEADY)
        joiner = rig.watch(job, watch_id="w2", saved=0)
        rig.admit(joiner, Progress("running", 1))
        await asyncio.sleep(0.5)  # several reads and offers

    assert outbox.events == []
    assert joiner.delivery.acks == 0  # type: ignore[attr-defined]
    assert len(rig.transport.requests) >= 2


async def test_an_end_is_published_even_while_a_copy_cannot_catch_up() -> None:
    """An end's id has no n: it needs no catch-up copy, so a refused copy does not hold it back."""
    outbox = FakeOutbox(fail_requeue=True)
    async with cluster_rig(outbox=outbox) as rig:
        job = rig.sim.create_job(timeline=[{"after": 0, "state": "success"}])
        joiner = rig.watch(job, watch_id="w2", saved=0)
        rig.admit(joiner, Progress("running", 1))
        await rig.until(lambda: joiner.delivery.acks == 1)  # type: ignore[attr-defined]

    assert outbox.routing_keys() == ["job.c1.success"]
    assert outbox.events[0].message_id == end_id("c1", job, "success")
    assert outbox.checkpoints == []


async def test_a_change_during_the_checkpoint_round_trip_is_published_when_the_copy_returns() -> (
    None
):
    """The feed sees the end while the watch's copy is on its way back: the copy gets it."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        job = rig.sim.create_job(timeline=[*STEADY, {"after": 5, "state": "failure"}])
        # Another watched job keeps the feed running while this one's copy is away.
        rig.admit(rig.watch(rig.sim.create_job(timeline=STEADY)))

        def hold_back_this_jobs_copy(watch: Watch, value: str) -> None:
            if watch.request.uuid != job:
                rig.deliver_copy(watch, value)

        rig.outbox.deliver_copy = hold_back_this_jobs_copy
        rig.admit(rig.watch(job))
        await rig.until(lambda: len(rig.outbox.checkpoints) == 2)
        reads = rig.transport.by_uuid()
        rig.clock.advance(5)
        await asyncio.sleep(0.3)  # several ends windows see the failure; its watch is away
        assert rig.outbox.routing_keys() == ["job.c1.paused", "job.c1.paused"]

        (saved,) = [c for c in rig.outbox.checkpoints if c["job"]["uuid"] == job]
        copy = rig.watch(job, watch_id=saved["watch_id"], saved=saved["changes"])
        rig.admit(copy, Progress("paused", saved["changes"]), resumed=True)
        await rig.until(lambda: rig.finished(job))

    assert rig.outbox.routing_keys() == ["job.c1.paused", "job.c1.paused", "job.c1.failure"]
    assert rig.transport.by_uuid() == reads  # the end came from the feed's view, not a read
