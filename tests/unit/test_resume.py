"""Resuming watches: newest history wins, late copies are settled, refused events come again."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from poller.errors import BrokerError, OntapUnavailable
from poller.events import Envelope, change_id
from poller.models import Job, WatchRequest, error_body
from poller.scheduler import ClusterScheduler
from poller.tracking import Policy, Progress
from poller.watches import Dispatcher, Watch
from tests.contract import end_id
from tests.fakes import FakeDelivery

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
POLICY = Policy(poll_interval_min_s=0.05, poll_interval_max_s=0.1)


@dataclass
class FakeOutbox:
    events: list[Envelope] = field(default_factory=list)
    attempts: int = 0
    failures: int = 0  # the next publishes that the broker refuses
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    refuse_copies: bool = False

    async def publish_event(self, envelope: Envelope) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise BrokerError("no confirm")
        self.events.append(envelope)

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        pass

    async def requeue_watch(self, watch: Watch, value: str) -> None:
        if self.refuse_copies:
            raise BrokerError("copy not confirmed")
        self.checkpoints.append(json.loads(value))


class FakeOntap:
    """An ONTAP client whose answer for the job is set by the test."""

    cluster = "c1"

    def __init__(self, answer: Callable[[], Awaitable[Job]]) -> None:
        self.answer = answer
        self.calls = 0

    async def get_job(self, uuid: str) -> Job:
        self.calls += 1
        return await self.answer()

    async def get_jobs(self, uuids: list[str]) -> dict[str, Job]:
        return {u: await self.get_job(u) for u in uuids}


def state(name: str) -> Callable[[], Awaitable[Job]]:
    async def answer() -> Job:
        return Job({"uuid": JOB, "state": name})

    return answer


@dataclass
class Rig:
    scheduler: ClusterScheduler
    outbox: FakeOutbox
    ontap: FakeOntap

    def watch(self, watch_id: str = "w1", deadline_in_s: float = 3600.0, saved: int = 0) -> Watch:
        """A held delivery whose own checkpoint carries ``saved`` changes."""
        return Watch(
            watch_id=watch_id,
            request=WatchRequest(JOB, "c1", None),
            delivery=FakeDelivery(),
            deadline_at=time.time() + deadline_in_s,
            held_since=time.time(),
            key=watch_id,
            saved_changes=saved,
        )

    async def until(self, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                if check():
                    return
                await asyncio.sleep(0.01)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    outbox = FakeOutbox()
    ontap = FakeOntap(state("running"))
    scheduler = ClusterScheduler(
        ontap,  # type: ignore[arg-type]
        Dispatcher("c1", outbox),
        POLICY,
        batch=False,
        batch_size=1,
        max_concurrent_requests=2,
        checkpoint_interval_s=600.0,
    )
    task = asyncio.create_task(scheduler.run())
    yield Rig(scheduler, outbox, ontap)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def keys(outbox: FakeOutbox) -> list[str]:
    return [e.routing_key for e in outbox.events]


async def test_a_copy_with_more_history_sets_the_jobs_n(rig: Rig) -> None:
    """The older twin arrives first; its newer twin's progress wins, so ids follow its lineage."""
    old, new = rig.watch(saved=1), rig.watch(saved=2)
    rig.ontap.answer = state("success")

    entry, _ = rig.scheduler.add(old, Progress("queued", 1))
    rig.scheduler.add(new, Progress("running", 2))
    await rig.until(lambda: bool(rig.outbox.events))

    assert keys(rig.outbox) == ["job.c1.success"]
    assert rig.outbox.events[0].message_id == change_id("c1", JOB, 2, "success")
    assert old.delivery.acks == 1 and new.delivery.acks == 1  # type: ignore[attr-defined]
    assert entry.track.progress.changes == 3


async def test_a_copy_with_less_history_does_not_set_it_back(rig: Rig) -> None:
    """An older copy joining later leaves the job's progress where it is."""
    entry, _ = rig.scheduler.add(rig.watch("w1"), Progress("running", 2))
    rig.scheduler.add(rig.watch("w2"), Progress("queued", 1))

    assert entry.track.progress == Progress("running", 2)


async def test_a_late_copy_of_an_ended_watch_is_settled_not_polled(rig: Rig) -> None:
    """Once a watch's final event is confirmed, a copy of it is acked and nothing is published."""
    rig.ontap.answer = state("success")
    first = rig.watch(saved=1)
    rig.scheduler.add(first, Progress("running", 1))
    await rig.until(lambda: first.delivery.acks == 1)  # type: ignore[attr-defined]
    calls = rig.ontap.calls

    late = rig.watch(saved=1)
    assert rig.scheduler.settle_if_ended(late)
    await rig.until(lambda: late.delivery.acks == 1)  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)  # several poll intervals

    assert keys(rig.outbox) == ["job.c1.success"]
    assert rig.ontap.calls == calls
    assert not rig.scheduler.settle_if_ended(rig.watch("another-watch"))


async def test_an_event_the_broker_refused_is_published_later_with_its_id(rig: Rig) -> None:
    """Two refused publishes: the watch stays held, the third poll publishes the same change."""
    rig.outbox.failures = 2
    rig.ontap.answer = state("success")
    watch = rig.watch(saved=1)

    rig.scheduler.add(watch, Progress("running", 1))
    await rig.until(lambda: watch.delivery.acks == 1)  # type: ignore[attr-defined]

    assert rig.outbox.attempts == 3
    assert keys(rig.outbox) == ["job.c1.success"]
    assert rig.outbox.events[0].message_id == change_id("c1", JOB, 1, "success")


async def test_a_deadline_during_a_failing_poll_ends_as_error_not_timeout(rig: Rig) -> None:
    """The poll under way when the deadline passes decides: all its attempts failed, so error."""

    async def unreachable() -> Job:
        await asyncio.sleep(0.5)  # retries under way past the deadline
        raise OntapUnavailable("down", error=error_body("ConnectError: connection refused"))

    rig.ontap.answer = unreachable
    watch = rig.watch(deadline_in_s=0.1)

    rig.scheduler.add(watch, Progress())
    await rig.until(lambda: watch.delivery.acks == 1)  # type: ignore[attr-defined]

    assert keys(rig.outbox) == ["watch.c1.error"]
    body = json.loads(rig.outbox.events[0].body)
    assert body == {"error": error_body("ConnectError: connection refused")}


async def test_a_deadline_while_ontap_answers_ends_as_timeout(rig: Rig) -> None:
    """The control: ONTAP answering, job still running at the deadline: timeout with the job."""
    watch = rig.watch(deadline_in_s=0.3, saved=1)

    rig.scheduler.add(watch, Progress("running", 1))
    await rig.until(lambda: watch.delivery.acks == 1)  # type: ignore[attr-defined]

    assert keys(rig.outbox) == ["watch.c1.timeout"]
    assert json.loads(rig.outbox.events[-1].body) == {"uuid": JOB, "state": "running"}


async def test_a_watch_that_joined_late_is_checkpointed_before_the_next_change(rig: Rig) -> None:
    """A fresh request joining a job at n=2 gets a copy saying so before n=2 is published."""
    rig.ontap.answer = state("running")
    first = rig.watch("w1", saved=1)
    rig.scheduler.add(first, Progress("queued", 1))
    joiner = rig.watch("w2", saved=0)
    rig.scheduler.add(joiner, Progress())
    await rig.until(lambda: bool(rig.outbox.events))

    assert rig.outbox.checkpoints[0]["watch_id"] == "w2"
    assert rig.outbox.checkpoints[0]["changes"] == 1  # caught up on queued, before running
    assert rig.outbox.events[0].message_id == change_id("c1", JOB, 1, "running")


async def test_no_change_is_published_while_a_copy_cannot_catch_up(rig: Rig) -> None:
    """If the catch-up copy is refused, a non-final change waits (same id later), the watch held."""
    rig.ontap.answer = state("paused")
    rig.outbox.refuse_copies = True
    joiner = rig.watch("w2", saved=0)
    rig.scheduler.add(joiner, Progress("running", 1))
    await asyncio.sleep(0.3)  # several polls

    assert rig.outbox.events == []
    assert joiner.delivery.acks == 0  # type: ignore[attr-defined]
    assert rig.ontap.calls >= 2


async def test_an_end_is_published_even_while_a_copy_cannot_catch_up(rig: Rig) -> None:
    """An end's id has no n: it needs no catch-up copy, so a refused copy does not hold it back."""
    rig.ontap.answer = state("success")
    rig.outbox.refuse_copies = True
    joiner = rig.watch("w2", saved=0)
    rig.scheduler.add(joiner, Progress("running", 1))
    await rig.until(lambda: joiner.delivery.acks == 1)  # type: ignore[attr-defined]

    assert keys(rig.outbox) == ["job.c1.success"]
    assert rig.outbox.events[0].message_id == end_id("c1", JOB, "success")
    assert rig.outbox.checkpoints == []
