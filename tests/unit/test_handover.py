"""Hand-overs to the dispatcher: one at a time per job, newest record next, again after a refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from poller.dispatcher import Applied
from poller.feed import JobView
from poller.handover import RETRY_S, Handovers
from poller.models import Job, error_body
from poller.simulator.testing import FakeClock
from poller.tracking import Gone, Observation, Seen

A, B = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
NOT_FOUND = error_body("entry doesn't exist", code="4", target="uuid")


def job(state: str, uuid: str = A) -> Job:
    return Job({"uuid": uuid, "state": state})


@dataclass
class Sink:
    """The dispatcher's side: what it was handed, in order; answers as told, when told."""

    answers: list[Applied] = field(default_factory=list)
    applied: list[tuple[str, Observation, bool]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    async def apply(
        self, job_uuid: str, observation: Observation, *, discovered: bool = False
    ) -> Applied:
        self.applied.append((job_uuid, observation, discovered))
        await self.gate.wait()
        return self.answers.pop(0) if self.answers else Applied.TAKEN

    def note_reachable(self, error: dict[str, Any] | None) -> None: ...

    def forget_discovered(self) -> None: ...

    def holds(self, job_uuid: str) -> bool:
        return True

    def states(self) -> list[str]:
        return [
            o.job.state if isinstance(o, Seen) else type(o).__name__ for _, o, _ in self.applied
        ]


@dataclass
class Rig:
    sink: Sink
    view: JobView
    clock: FakeClock
    handovers: Handovers
    interest: dict[str, bool | None]
    ended: list[str]
    wakes: list[int]
    tasks: list[asyncio.Task[None]]

    async def settle(self) -> None:
        while not all(t.done() for t in self.tasks):
            await asyncio.gather(*self.tasks)


def rig(*answers: Applied) -> Rig:
    sink = Sink(list(answers))
    view = JobView()
    clock = FakeClock(1000.0)
    interest: dict[str, bool | None] = {A: False, B: True}
    ended: list[str] = []
    wakes: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        tasks.append(asyncio.get_running_loop().create_task(coro))

    handovers = Handovers(
        sink,
        view,
        interest=interest.get,
        ended=ended.append,
        spawn=spawn,
        wake=lambda: wakes.append(1),
        clock=clock,
    )
    return Rig(sink, view, clock, handovers, interest, ended, wakes, tasks)


def seen(r: Rig, record: Job) -> Seen:
    """A record as the scheduler has it: in the view, then offered."""
    r.view.record(record, 0.0)
    return Seen(record)


async def test_one_hand_over_at_a_time_and_the_newest_record_goes_next() -> None:
    """running is on its way when paused and then running again arrive: only the latest follows."""
    r = rig()
    r.sink.gate.clear()
    r.handovers.offer(A, seen(r, job("running")), discovered=False)
    await asyncio.sleep(0)
    assert r.handovers.busy(A) and not r.handovers.busy(B)
    r.handovers.offer(A, seen(r, job("paused")), discovered=False)
    r.handovers.offer(A, seen(r, job("queued")), discovered=False)
    await asyncio.sleep(0)
    assert r.sink.states() == ["running"]
    r.sink.gate.set()
    await r.settle()
    assert r.sink.states() == ["running", "queued"]
    assert [u for u, _, _ in r.sink.applied] == [A, A]
    assert not r.handovers.busy(A)
    assert r.wakes  # the scheduler looks again once a hand-over ends


async def test_nothing_newer_nothing_more() -> None:
    """The record handed over is the latest: one hand-over, and the view has no news."""
    r = rig()
    r.handovers.offer(A, seen(r, job("running")), discovered=False)
    await r.settle()
    assert r.sink.states() == ["running"]
    assert r.view.news(A) is None


async def test_a_newer_record_of_a_job_nobody_wants_any_longer_is_not_handed_over() -> None:
    """Its watches ended during the hand-over: the news stays in the view."""
    r = rig()
    r.sink.gate.clear()
    r.handovers.offer(A, seen(r, job("running")), discovered=False)
    await asyncio.sleep(0)
    seen(r, job("paused"))
    r.interest[A] = None
    r.sink.gate.set()
    await r.settle()
    assert r.sink.states() == ["running"]


async def test_a_newer_record_of_a_discovered_job_is_handed_over_as_discovered() -> None:
    """Discovered only: the next record goes with discovered=True."""
    r = rig()
    r.sink.gate.clear()
    r.handovers.offer(B, seen(r, job("running", B)), discovered=True)
    await asyncio.sleep(0)
    seen(r, job("success", B))
    r.sink.gate.set()
    await r.settle()
    assert [(o.job.state, d) for _, o, d in r.sink.applied if isinstance(o, Seen)] == [
        ("running", True),
        ("success", True),
    ]


async def test_what_the_sink_could_not_take_is_offered_again_after_retry_s_as_the_latest() -> None:
    """RETRY: 2 s later, the record the view holds then (the job moved on meanwhile)."""
    r = rig(Applied.RETRY)
    r.handovers.offer(A, seen(r, job("running")), discovered=False)
    await r.settle()
    assert r.handovers.next_at() == 1000.0 + RETRY_S
    seen(r, job("paused"))
    r.handovers.offer_again(1000.0 + RETRY_S - 0.1)
    await r.settle()
    assert r.sink.states() == ["running"]
    r.handovers.offer_again(1000.0 + RETRY_S)
    await r.settle()
    assert r.sink.states() == ["running", "paused"]
    assert [u for u, _, _ in r.sink.applied] == [A, A]
    assert r.handovers.next_at() is None


async def test_a_retry_keeps_whether_the_job_was_discovered() -> None:
    """A discovered job refused once is offered again as discovered."""
    r = rig(Applied.RETRY)
    r.handovers.offer(B, seen(r, job("running", B)), discovered=True)
    await r.settle()
    r.handovers.offer_again(1000.0 + RETRY_S)
    await r.settle()
    assert [d for _, _, d in r.sink.applied] == [True, True]


async def test_a_retry_is_not_offered_while_another_hand_over_of_the_job_is_under_way() -> None:
    """Due again, but the job is being handed over: it waits its turn."""
    r = rig(Applied.RETRY)
    r.handovers.offer(A, seen(r, job("running")), discovered=False)
    await r.settle()
    r.sink.gate.clear()
    r.handovers.offer(A, seen(r, job("paused")), discovered=False)
    await asyncio.sleep(0)
    r.handovers.offer_again(1000.0 + RETRY_S)
    await asyncio.sleep(0)
    assert r.sink.states() == ["running", "paused"]
    assert r.handovers.next_at() == 1000.0 + RETRY_S


async def test_a_forgotten_job_is_not_offered_again() -> None:
    """forget: the job's watches left; its refused hand-over is dropped."""
    r = rig(Applied.RETRY)
    r.handovers.offer(A, seen(r, job("running")), discovered=False)
    await r.settle()
    r.handovers.forget(A)
    r.handovers.forget(B)  # nothing waiting: no harm
    r.handovers.offer_again(1000.0 + 10 * RETRY_S)
    await r.settle()
    assert r.sink.states() == ["running"]
    assert r.handovers.next_at() is None


async def test_a_failed_read_arriving_during_a_hand_over_goes_right_after_it() -> None:
    """Not found while running is on its way: it follows at once, as itself, not a record."""
    r = rig()
    r.sink.gate.clear()
    r.handovers.offer(A, seen(r, job("running")), discovered=False)
    await asyncio.sleep(0)
    r.handovers.offer(A, Gone(NOT_FOUND), discovered=False)
    r.sink.gate.set()
    await r.settle()
    assert r.sink.states() == ["running", "Gone"]
    assert r.handovers.next_at() is None


async def test_a_job_whose_watches_all_ended_is_reported_and_nothing_follows() -> None:
    """ENDED: the scheduler is told to stop reading it; a newer record is not handed over."""
    r = rig(Applied.ENDED)
    r.sink.gate.clear()
    r.handovers.offer(A, seen(r, job("success")), discovered=False)
    await asyncio.sleep(0)
    seen(r, job("failure"))
    r.sink.gate.set()
    await r.settle()
    assert r.ended == [A]
    assert r.sink.states() == ["success"]


async def test_a_failed_observation_is_offered_again_as_itself() -> None:
    """RETRY of a 404: offered again as the 404, whatever record the view holds."""
    r = rig(Applied.RETRY)
    seen(r, job("running"))
    r.handovers.offer(A, Gone(NOT_FOUND), discovered=False)
    await r.settle()
    r.handovers.offer_again(1000.0 + RETRY_S)
    await r.settle()
    assert r.sink.states() == ["Gone", "Gone"]
