"""The scheduler against a scripted cluster and dispatcher, on a clock that only the test moves.

``Rig.at(t)`` sets the worker's clock to ``t`` seconds after the start and wakes the scheduler,
which ticks at once and runs what the tick starts; nothing waits for real time. With
``poll_interval_min`` 1 s and ``poll_interval_max`` 8 s, new watches are read 0.25 s after they
arrive (a quarter of ``poll_interval_min``), and reads go out at most every 0.125 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from poller.dispatcher import Applied
from poller.errors import FilterRefused
from poller.handover import RETRY_S
from poller.metrics import Metrics
from poller.models import Job, error_body
from poller.reads import AWAY_S
from poller.scheduler import ClusterScheduler
from poller.simulator.testing import T0, FakeClock
from poller.tracking import Gone, Policy, Seen
from tests.fakes import NOT_FOUND, ScriptedCluster, ScriptedSink

POLICY = Policy(poll_interval_min_s=1.0, poll_interval_max_s=8.0)
A, B, C, D, E, W, X = (f"00000000-0000-0000-0000-00000000000{c}" for c in "abcde0f")


def job(uuid: str, state: str = "running", message: str | None = None) -> Job:
    raw: dict[str, Any] = {"uuid": uuid, "state": state}
    if message is not None:
        raw["message"] = message
    return Job(raw)


@dataclass
class Rig:
    clock: FakeClock
    cluster: ScriptedCluster
    sink: ScriptedSink
    scheduler: ClusterScheduler

    async def at(self, t: float) -> None:
        """Move the clock to ``t`` s after the start; let the tick and what it starts run."""
        self.clock.now = T0 + t
        self.scheduler.wake()
        await self.settle()

    async def settle(self) -> None:
        for _ in range(40):
            await asyncio.sleep(0)

    def reads(self) -> list[tuple[float, list[str]]]:
        """Each read by uuid: when (s after the start) and which jobs."""
        return [(when - T0, uuids) for when, uuids in self.cluster.reads]

    def queries(self) -> list[tuple[float, str]]:
        return [(when - T0, endpoint) for when, endpoint in self.cluster.queries]

    def want(self, *job_uuids: str, fresh: bool = True) -> None:
        for job_uuid in job_uuids:
            self.scheduler.want(job_uuid, fresh=fresh)


@contextlib.asynccontextmanager
async def running(
    *, feed: bool = True, batch_size: int = 101, purge_window_s: float = 300.0
) -> AsyncIterator[Rig]:
    """A scheduler running on a fake clock at T0, against a scripted cluster ``c1``."""
    clock = FakeClock(T0)
    cluster, sink = ScriptedCluster(clock), ScriptedSink()
    scheduler = ClusterScheduler(
        cluster,
        sink,
        POLICY,
        feed=feed,
        batch_size=batch_size,
        purge_window_s=purge_window_s,
        clock=clock,
    )
    task = asyncio.create_task(scheduler.run())
    rig = Rig(clock, cluster, sink, scheduler)
    try:
        await rig.settle()
        yield rig
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- what operators see -------------------------------------------------------------------------


async def test_a_read_that_raises_is_logged_as_scheduler_task_failed_with_the_cluster() -> None:
    """A bug below the scheduler: the documented scheduler.task_failed, naming cluster and error."""
    async with running(feed=False) as rig:
        rig.cluster.read_failure = RuntimeError("a bug")
        with capture_logs() as logs:
            rig.want(A)
            await rig.at(0.25)
    failed = [e for e in logs if e["event"] == "scheduler.task_failed"]
    assert [(e["log_level"], e["cluster"], e["error"]) for e in failed] == [
        ("error", "c1", "RuntimeError('a bug')")
    ]


@pytest.mark.parametrize(("feed", "enabled"), [(True, 1.0), (False, 0.0)])
async def test_the_feed_enabled_gauge_says_from_the_start_whether_the_feed_serves(
    feed: bool, enabled: float
) -> None:
    """ontap_poller_feed_enabled{cluster="c1"}: 1 with the feed, 0 with feed = false."""
    metrics = Metrics()
    clock = FakeClock(T0)
    ClusterScheduler(
        ScriptedCluster(clock), ScriptedSink(), POLICY, feed=feed, metrics=metrics, clock=clock
    )
    gauge = metrics.registry.get_sample_value("ontap_poller_feed_enabled", {"cluster": "c1"})
    assert gauge == enabled


async def test_an_idle_scheduler_sleeps_instead_of_spinning() -> None:
    """Nothing watched: one tick, then it waits; it does not tick again while nothing happens."""
    clock = FakeClock(T0)
    reads_of_clock = 0

    def counting_clock() -> float:
        nonlocal reads_of_clock
        reads_of_clock += 1
        return clock()

    scheduler = ClusterScheduler(
        ScriptedCluster(clock), ScriptedSink(), POLICY, clock=counting_clock
    )
    task = asyncio.create_task(scheduler.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert reads_of_clock <= 4  # one tick: its now, and the wait computed from it


# --- new and returning watches ------------------------------------------------------------------


async def test_new_watches_are_read_a_quarter_of_poll_interval_min_later_together() -> None:
    """Watches come in bursts: the first is read 0.25 s after it came, in one call with the next."""
    async with running(feed=False) as rig:
        rig.cluster.jobs = {A: job(A), B: job(B)}
        rig.want(A)
        await rig.at(0.125)
        rig.want(B)
        await rig.at(0.24)
        assert rig.reads() == []
        await rig.at(0.25)
    assert rig.reads() == [(0.25, [A, B])]
    assert rig.sink.applied == [(A, Seen(job(A)), False), (B, Seen(job(B)), False)]


async def test_a_new_watch_of_a_job_the_feed_listed_is_handed_its_record_at_once() -> None:
    """The active set showed X, which nobody watched: a watch of X gets that record, and no read."""
    async with running() as rig:
        rig.cluster.active = [job(A), job(X, message="Copying")]
        rig.want(A)
        await rig.at(0.0)  # the first active round: news for A's watch; X is nobody's
        assert rig.sink.applied == [(A, Seen(job(A)), False)]
        rig.want(X)
        await rig.at(0.5)
    assert rig.sink.applied == [
        (A, Seen(job(A)), False),
        (X, Seen(job(X, message="Copying")), False),
    ]
    assert rig.reads() == []  # the feed accounts for both


async def test_returning_watches_are_handed_what_changed_while_they_were_away() -> None:
    """Watches of A and B re-enqueued, A changed meanwhile: A's change at once; nothing for B."""
    async with running() as rig:
        rig.cluster.active = [job(A), job(B), job(W)]
        rig.want(A, B, W)
        await rig.at(0.0)
        assert len(rig.sink.applied) == 3
        rig.scheduler.drop(A)
        rig.scheduler.drop(B)
        rig.sink.held = {A, B}  # their watches are away, on their way back
        rig.cluster.active = [job(A, message="50%"), job(B), job(W)]
        await rig.at(1.0)  # the next active round: A's news waits for its watches
        assert len(rig.sink.applied) == 3
        rig.want(A, B, fresh=False)
        await rig.at(1.5)
    assert rig.sink.applied[3:] == [(A, Seen(job(A, message="50%")), False)]
    assert rig.reads() == []


async def test_a_watch_of_a_job_the_feed_accounts_for_does_not_bring_the_next_round_forward() -> (
    None
):
    """Rounds backed off to 2 s apart: a watch of X, listed in the last one, leaves the next at 3 s."""
    async with running() as rig:
        rig.cluster.active = [job(W), job(X)]
        rig.want(W)
        await rig.at(0.0)
        await rig.at(1.0)
        rig.clock.now = T0 + 1.5
        rig.want(X)
        await rig.at(2.5)
        await rig.at(2.875)
        assert [t for t, kind in rig.queries() if kind == "active"] == [0.0, 1.0]
        await rig.at(3.0)
    assert [t for t, kind in rig.queries() if kind == "active"] == [0.0, 1.0, 3.0]
    assert rig.sink.applied == [(W, Seen(job(W)), False), (X, Seen(job(X)), False)]


async def test_a_new_watch_brings_the_next_round_forward() -> None:
    """Rounds backed off to 2 s apart: a watch of a job not listed at 1.5 s, a round at 2.5 s."""
    async with running() as rig:
        rig.cluster.active = [job(W)]
        rig.want(W)
        await rig.at(0.0)
        await rig.at(1.0)
        rig.clock.now = T0 + 1.5
        rig.want(X)
        await rig.at(2.5)
    assert [t for t, kind in rig.queries() if kind == "active"] == [0.0, 1.0, 2.5]


async def test_a_returning_watch_keeps_its_jobs_place_in_the_read_schedule() -> None:
    """Without the feed: a job read at 0.25 s is read again at 1.25 s, its watch away or not."""
    async with running(feed=False) as rig:
        rig.cluster.jobs = {A: job(A)}
        rig.want(A)
        await rig.at(0.25)
        rig.scheduler.drop(A)
        await rig.at(0.5)
        rig.want(A, fresh=False)
        await rig.at(0.75)
        await rig.at(1.0)
        await rig.at(1.25)
    assert rig.reads() == [(0.25, [A]), (1.25, [A])]
    assert rig.sink.applied == [(A, Seen(job(A)), False)]  # unchanged: nothing new to hand over


# --- a burst of new watches with the feed on ----------------------------------------------------


async def feed_running_a_second(rig: Rig) -> None:
    """W watched and listed from the start: active rounds at 0 and 1 s, the next due at 3 s."""
    rig.cluster.active = [job(W)]
    rig.want(W)
    await rig.at(0.0)
    await rig.at(1.0)
    assert [t for t, kind in rig.queries() if kind == "active"] == [0.0, 1.0]


async def test_more_new_watches_than_a_batch_are_accounted_for_by_one_active_round() -> None:
    """4 new watches, batches of 3: an active round at once; E, which it does not list, by uuid."""
    async with running(batch_size=3) as rig:
        await feed_running_a_second(rig)
        await rig.at(1.75)
        rig.cluster.active = [job(W), job(B), job(C), job(D)]
        rig.cluster.jobs = {E: job(E, "queued")}
        rig.want(B, C, D, E)
        await rig.at(2.0)  # due, and a full poll_interval_min after the last active round
        assert (2.0, "active") in rig.queries()
        assert rig.reads() == []
        await rig.at(2.125)
    assert rig.reads() == [(2.125, [E])]
    assert [u for u, _, _ in rig.sink.applied] == [W, B, C, D, E]


async def test_during_the_bursts_active_round_nothing_is_read_by_uuid() -> None:
    """The round is slow and the ends query done: the new watches wait for the round, then E."""
    async with running(batch_size=3) as rig:
        await feed_running_a_second(rig)
        await rig.at(1.75)
        rig.cluster.active = [job(W), job(B), job(C), job(D)]
        rig.cluster.jobs = {E: job(E, "queued")}
        rig.want(B, C, D, E)
        gate = rig.cluster.hold("active")
        await rig.at(2.0)
        assert (2.0, "active") in rig.queries()
        await rig.at(2.25)
        assert rig.reads() == []
        gate.set()
        await rig.settle()
    assert rig.reads() == [(2.25, [E])]


async def test_as_many_new_watches_as_a_batch_are_read_by_uuid_in_one_call() -> None:
    """3 new watches, batches of 3: one read by uuid, no extra active round."""
    async with running(batch_size=3) as rig:
        await feed_running_a_second(rig)
        await rig.at(1.75)
        rig.cluster.jobs = {B: job(B), C: job(C), D: job(D)}
        rig.want(B, C, D)
        await rig.at(2.0)
    assert rig.reads() == [(2.0, [B, C, D])]
    assert [t for t, kind in rig.queries() if kind == "active"] == [0.0, 1.0]


async def test_a_burst_just_after_an_active_round_is_read_by_uuid() -> None:
    """4 new watches 0.5 s after a round that did not list them: batches, not another round."""
    async with running(batch_size=3) as rig:
        await feed_running_a_second(rig)
        rig.cluster.jobs = {u: job(u) for u in (B, C, D, E)}
        await rig.at(1.25)
        rig.want(B, C, D, E)
        await rig.at(1.5)
    assert rig.reads() == [(1.5, [B, C, D]), (1.5, [E])]
    assert [t for t, kind in rig.queries() if kind == "active"] == [0.0, 1.0]


# --- reads by uuid ------------------------------------------------------------------------------


async def test_reads_back_off_while_the_job_is_unchanged_and_come_soon_after_a_change() -> None:
    """Without the feed: 1 s after the first read, 2 s after an unchanged one, 1 s after a change."""
    async with running(feed=False) as rig:
        rig.cluster.jobs = {A: job(A, message="10%")}
        rig.want(A)
        for t in (0.25, 1.25, 3.0):
            await rig.at(t)
        rig.cluster.jobs = {A: job(A, message="20%")}
        for t in (3.25, 4.0, 4.25):
            await rig.at(t)
    assert rig.reads() == [(0.25, [A]), (1.25, [A]), (3.25, [A]), (4.25, [A])]
    assert [o for _, o, _ in rig.sink.applied] == [
        Seen(job(A, message="10%")),
        Seen(job(A, message="20%")),
    ]


async def test_the_next_read_counts_from_when_the_read_was_made_not_when_it_answered() -> None:
    """Read at 0.25 s, answered at 0.5 s: read again at 1.25 s, so jobs read together stay so."""
    async with running(feed=False) as rig:
        rig.cluster.jobs = {A: job(A)}
        gate = rig.cluster.hold("read")
        rig.want(A)
        await rig.at(0.25)
        rig.clock.now = T0 + 0.5
        gate.set()
        await rig.settle()
        await rig.at(1.25)
    assert rig.reads() == [(0.25, [A]), (1.25, [A])]


async def test_a_job_read_by_uuid_the_feed_then_accounts_for_is_read_at_once_on_fallback() -> None:
    """B read at 0.25 s is left to the feed; the filters refused at 1 s: B is read at 1 s."""
    async with running() as rig:
        rig.cluster.jobs = {B: job(B)}
        rig.want(B)
        await rig.at(0.0)  # an active round that does not list B yet
        await rig.at(0.25)
        assert rig.reads() == [(0.25, [B])]
        rig.cluster.query_failure = FilterRefused(
            "HTTP 400: Invalid value", error=error_body("Invalid value", code="262179")
        )
        with capture_logs() as logs:
            await rig.at(1.0)
    assert rig.reads() == [(0.25, [B]), (1.0, [B])]
    assert [(e["event"], e["log_level"]) for e in logs] == [("feed.filters_refused", "warning")]


async def test_a_job_dropped_while_it_is_read_is_neither_handed_over_nor_remembered() -> None:
    """Its watch ended mid-read: nothing for the dispatcher; a later watch gets no stale record."""
    async with running(feed=False) as rig:
        rig.cluster.jobs = {A: job(A)}
        gate = rig.cluster.hold("read")
        rig.want(A)
        await rig.at(0.25)
        rig.scheduler.drop(A)
        gate.set()
        await rig.settle()
        assert rig.sink.applied == []
        rig.want(A)  # the first watch of it again, as far as anyone here knows
        await rig.settle()
        assert rig.sink.applied == []
        await rig.at(2.0)
    assert rig.reads() == [(0.25, [A]), (2.0, [A])]
    assert rig.sink.applied == [(A, Seen(job(A)), False)]


async def test_a_job_that_is_gone_is_handed_over_as_such() -> None:
    """A 404 on a read by uuid goes to the dispatcher as it is: it decides what becomes of watches."""
    async with running(feed=False) as rig:
        rig.want(A)
        await rig.at(0.25)
    assert rig.sink.applied == [(A, Gone(NOT_FOUND), False)]


# --- jobs gone from the active set --------------------------------------------------------------


async def test_a_watched_job_gone_from_the_active_set_is_read_by_uuid_a_tick_later() -> None:
    """A no longer listed and no end seen: read by uuid poll_interval_min after that round."""
    async with running() as rig:
        rig.cluster.active = [job(A)]
        rig.want(A)
        await rig.at(0.0)
        await rig.at(0.5)  # A was due for its first read: the feed accounts for it
        rig.cluster.active = []
        rig.cluster.jobs = {A: job(A, "success")}
        await rig.at(1.0)  # the round that no longer lists A
        await rig.at(1.875)
        assert rig.reads() == []
        await rig.at(2.0)
    assert rig.reads() == [(2.0, [A])]
    assert [o for _, o, _ in rig.sink.applied] == [Seen(job(A)), Seen(job(A, "success"))]


async def test_a_job_nobody_watches_gone_from_the_active_set_is_forgotten() -> None:
    """X, nobody's, listed then not: a watch of X later is not handed the old running record."""
    async with running() as rig:
        rig.cluster.active = [job(W), job(X)]
        rig.want(W)
        await rig.at(0.0)
        rig.cluster.active = [job(W)]
        rig.cluster.jobs = {X: job(X, "success")}
        await rig.at(1.0)
        rig.want(X)
        await rig.settle()
        assert [u for u, _, _ in rig.sink.applied] == [W]
        await rig.at(1.25)
    assert rig.reads() == [(1.25, [X])]
    assert rig.sink.applied[1:] == [(X, Seen(job(X, "success")), False)]


# --- a feed nobody needs, and jobs nobody watches any longer ------------------------------------


async def test_a_feed_nobody_needs_forgets_what_it_saw_after_twice_poll_interval_max() -> None:
    """Rest from 1 s; at 17.5 s a new watch of A is not handed what the feed saw, but reads A."""
    async with running() as rig:
        rig.cluster.active = [job(A)]
        rig.want(A)
        await rig.at(0.0)
        rig.scheduler.drop(A)  # nothing watched: the feed rests
        rig.cluster.active = []
        rig.cluster.jobs = {A: job(A, "success")}
        await rig.at(1.0)
        await rig.at(17.5)
        rig.want(A)
        await rig.settle()
    assert rig.reads() == [(17.5, [A])]
    assert rig.sink.applied == [(A, Seen(job(A)), False), (A, Seen(job(A, "success")), False)]


async def test_without_the_feed_a_job_away_longer_than_away_s_is_forgotten() -> None:
    """Its watch left at 0.25 s; at 61.5 s a new watch is not handed its old record: A is read."""
    assert AWAY_S == 60.0
    async with running(feed=False) as rig:
        rig.cluster.jobs = {A: job(A)}
        rig.want(A)
        await rig.at(0.25)
        rig.scheduler.drop(A)
        await rig.at(1.0)
        await rig.at(61.0)
        await rig.at(61.5)
        rig.want(A)
        await rig.settle()
        assert rig.sink.applied == [(A, Seen(job(A)), False)]
        await rig.at(61.75)
    assert rig.reads() == [(0.25, [A]), (61.75, [A])]


async def test_without_the_feed_a_job_back_within_away_s_is_handed_its_last_record() -> None:
    """Its watch left at 0.25 s and a new one came at 60 s: the record read before, at once."""
    async with running(feed=False) as rig:
        rig.cluster.jobs = {A: job(A)}
        rig.want(A)
        await rig.at(0.25)
        rig.scheduler.drop(A)
        await rig.at(1.0)
        await rig.at(60.0)
        rig.want(A)
        await rig.settle()
    assert rig.sink.applied == [(A, Seen(job(A)), False)] * 2


async def test_what_the_dispatcher_could_not_take_is_offered_again_retry_s_later() -> None:
    """Refused at 0.25 s (the broker, or watches away): offered again at 2.25 s, read or not."""
    async with running(feed=False) as rig:
        rig.sink.answers = [Applied.RETRY]
        rig.cluster.jobs = {A: job(A)}
        rig.want(A)
        await rig.at(0.25)
        rig.cluster.hold("read")  # the next read, at 1.25 s, does not answer
        await rig.at(1.25)
        await rig.at(2.125)
        assert len(rig.sink.applied) == 1
        await rig.at(0.25 + RETRY_S)
    assert rig.sink.applied == [(A, Seen(job(A)), False)] * 2


async def test_a_newer_record_arriving_during_a_hand_over_goes_right_after_it() -> None:
    """The dispatcher is slow with A running; the next round shows 50%: that goes next."""
    async with running() as rig:
        rig.sink.gate = asyncio.Event()
        rig.cluster.active = [job(A)]
        rig.want(A)
        await rig.at(0.0)
        rig.cluster.active = [job(A, message="50%")]
        await rig.at(1.0)
        assert len(rig.sink.applied) == 1
        rig.sink.gate.set()
        await rig.settle()
    assert rig.sink.applied == [(A, Seen(job(A)), False), (A, Seen(job(A, message="50%")), False)]


async def test_the_first_ends_window_reaches_back_over_the_purge_window_given() -> None:
    """purge_window_s 60: the first end_time>= is the cluster's now (2 days behind) less 60 s."""
    async with running(purge_window_s=60.0) as rig:
        rig.want(A)
        await rig.at(0.0)
    assert rig.cluster.filters[:2] == [
        {"state": "queued|running|paused"},
        {"end_time": ">=2026-11-26T19:30:04+00:00"},
    ]


async def test_a_dropped_jobs_refused_hand_over_is_not_offered_again() -> None:
    """The dispatcher could not take A's record, then A's watches ended: nothing is offered again."""
    async with running(feed=False) as rig:
        rig.sink.answers = [Applied.RETRY]
        rig.cluster.jobs = {A: job(A)}
        rig.want(A)
        await rig.at(0.25)
        rig.scheduler.drop(A)
        await rig.at(0.25 + RETRY_S)
        await rig.at(1.0 + RETRY_S)
    assert rig.sink.applied == [(A, Seen(job(A)), False)]


# --- reading --------------------------------------------------------------------------------------


async def test_a_job_the_feed_accounts_for_is_reading_while_a_feed_query_is_under_way() -> None:
    """reading(A): while the active round that may tell A's next change runs, and not after."""
    async with running() as rig:
        rig.cluster.active = [job(A)]
        rig.want(A)
        await rig.at(0.0)
        assert not rig.scheduler.reading(A)
        gate = rig.cluster.hold("active")
        await rig.at(1.0)
        assert rig.scheduler.reading(A)
        assert not rig.scheduler.reading(B)  # not watched, not accounted for
        gate.set()
        await rig.settle()
        assert not rig.scheduler.reading(A)
