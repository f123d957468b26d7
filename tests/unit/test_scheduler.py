"""The per-cluster scheduler at scale: full collection calls, a bound on calls, ends first."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from poller.errors import BrokerError, JobNotFound
from poller.events import Envelope
from poller.models import Job, WatchRequest, error_body
from poller.scheduler import ClusterScheduler
from poller.tracking import Policy, Progress
from poller.watches import Dispatcher, Watch
from tests.fakes import FakeDelivery

POLICY = Policy(poll_interval_min_s=0.2, poll_interval_max_s=0.4)


@dataclass
class FakeOutbox:
    events: list[Envelope] = field(default_factory=list)
    #: Events of these states wait for ``gate`` before the broker "confirms" them.
    held_states: frozenset[str] = frozenset()
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    async def publish_event(self, envelope: Envelope) -> None:
        if envelope.routing_key.rsplit(".", 1)[-1] in self.held_states:
            self.waiting += 1
            await self.gate.wait()
        self.events.append(envelope)

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        pass

    async def requeue_watch(self, watch: Watch, value: str) -> None:
        raise BrokerError("no copies in these tests: the watch stays held")


class FakeOntap:
    """Jobs in fixed states; records every call and how many ran at once."""

    cluster = "c1"

    def __init__(self, states: dict[str, str], missing: frozenset[str] = frozenset()) -> None:
        self.states = states
        self.missing = missing  # left out of collection answers (a lagging replica)
        self.collection_calls: list[int] = []
        self.single_calls: list[str] = []
        self.running = 0
        self.most_at_once = 0

    async def _call(self) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1

    def _job(self, uuid_: str) -> Job:
        return Job({"uuid": uuid_, "state": self.states[uuid_]})

    async def get_jobs(self, uuids: list[str]) -> dict[str, Job]:
        self.collection_calls.append(len(uuids))
        await self._call()
        return {u: self._job(u) for u in uuids if u in self.states and u not in self.missing}

    async def get_job(self, uuid_: str) -> Job:
        self.single_calls.append(uuid_)
        await self._call()
        if uuid_ not in self.states:
            raise JobNotFound("gone", error=error_body("entry doesn't exist", code="4"))
        return self._job(uuid_)


@dataclass
class Rig:
    scheduler: ClusterScheduler
    ontap: FakeOntap
    outbox: FakeOutbox

    def watch(self, job: str) -> Watch:
        return Watch(
            watch_id=str(uuid.uuid4()),
            request=WatchRequest(job, "c1", None),
            delivery=FakeDelivery(),
            deadline_at=time.time() + 3600,
            held_since=time.time(),
            key=job,
        )

    def add(self, jobs: list[str]) -> None:
        for job in jobs:
            self.scheduler.add(self.watch(job), Progress())

    async def until(self, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                if check():
                    return
                await asyncio.sleep(0.01)


def jobs(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


@pytest.fixture
async def make_rig() -> AsyncIterator[Callable[..., Rig]]:
    tasks: list[asyncio.Task[None]] = []

    def make(ontap: FakeOntap, *, outbox: FakeOutbox | None = None, **options: Any) -> Rig:
        outbox = outbox or FakeOutbox()
        settings: dict[str, Any] = {
            "batch": True,
            "batch_size": 100,
            "max_concurrent_requests": 6,
            "checkpoint_interval_s": 600.0,
        }
        settings.update(options)
        scheduler = ClusterScheduler(ontap, Dispatcher("c1", outbox), POLICY, **settings)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(scheduler.run()))
        return Rig(scheduler, ontap, outbox)

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_burst_of_watches_is_read_in_full_collection_calls(make_rig) -> None:
    """250 jobs watched at once: first read in calls of 100, 100 and 50; no single GET."""
    names = jobs(250)
    rig = make_rig(FakeOntap(dict.fromkeys(names, "running")))
    rig.add(names)

    await rig.until(lambda: sum(rig.ontap.collection_calls) >= 250)

    assert sorted(rig.ontap.collection_calls[:3], reverse=True) == [100, 100, 50]
    assert rig.ontap.single_calls == []


async def test_jobs_read_together_are_read_together_again(make_rig) -> None:
    """Unchanged jobs keep their cadence from the first read: later reads stay full."""
    names = jobs(150)
    rig = make_rig(FakeOntap(dict.fromkeys(names, "running")))
    rig.add(names)

    await rig.until(lambda: len(rig.ontap.collection_calls) >= 8)

    assert sorted(rig.ontap.collection_calls[:8], reverse=True) == [100] * 4 + [50] * 4


async def test_with_batch_false_each_job_gets_its_own_get(make_rig) -> None:
    """batch = false: one GET per job and no collection call."""
    names = jobs(5)
    rig = make_rig(FakeOntap(dict.fromkeys(names, "running")), batch=False)
    rig.add(names)

    await rig.until(lambda: len(set(rig.ontap.single_calls)) == 5)

    assert rig.ontap.collection_calls == []


async def test_a_job_missing_from_the_collection_answer_is_confirmed_with_one_get(
    make_rig,
) -> None:
    """Absent from the answer: one GET tells; here it is there (a lagging replica), no end."""
    names = jobs(20)
    lagging = names[3]
    rig = make_rig(FakeOntap(dict.fromkeys(names, "running"), missing=frozenset({lagging})))
    rig.add(names)

    await rig.until(lambda: len(rig.outbox.events) == 20)

    assert rig.ontap.single_calls[0] == lagging
    assert {e.headers["ce-subject"] for e in rig.outbox.events} == set(names)
    assert all(e.routing_key == "job.c1.running" for e in rig.outbox.events)


async def test_a_job_gone_from_the_answer_and_the_get_ends_as_not_found(make_rig) -> None:
    """Absent from the answer and 404 on its own GET: watch.c1.not_found."""
    names = jobs(10)
    states = dict.fromkeys(names[1:], "running")
    rig = make_rig(FakeOntap(states))
    rig.add(names)

    await rig.until(lambda: any(e.routing_key == "watch.c1.not_found" for e in rig.outbox.events))

    assert rig.ontap.single_calls == [names[0]]


async def test_calls_to_one_cluster_never_exceed_max_concurrent_requests(make_rig) -> None:
    """400 jobs one GET each (batch = false): never more than 3 calls at once."""
    names = jobs(400)
    rig = make_rig(
        FakeOntap(dict.fromkeys(names, "running")), batch=False, max_concurrent_requests=3
    )
    rig.add(names)

    await rig.until(lambda: len(rig.ontap.single_calls) >= 400)

    assert rig.ontap.most_at_once == 3


async def test_an_end_is_published_while_other_changes_wait_their_turn(make_rig) -> None:
    """Hundreds of first sightings stuck at the broker do not hold back a job's final event."""
    names = jobs(300)
    states = dict.fromkeys(names, "running")
    states[names[-1]] = "success"
    outbox = FakeOutbox(held_states=frozenset({"running"}))
    rig = make_rig(FakeOntap(states), outbox=outbox)
    rig.add(names)

    await rig.until(lambda: any(e.routing_key == "job.c1.success" for e in outbox.events))

    # The other changes went to the broker a bounded number at a time, not all 299 at once.
    assert 0 < outbox.waiting < 299
    outbox.gate.set()
    await rig.until(lambda: len(outbox.events) == 300)
