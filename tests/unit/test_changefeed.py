"""The change feed of one cluster: the queries it sends, when each is due, and what it reports.

A scripted cluster answers the feed's one call; the worker's clock is a fake that only the test
moves, and the cluster's clock runs two days behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from poller.changefeed import ChangeFeed, Round
from poller.errors import OntapUnavailable
from poller.models import Job, error_body
from poller.ontap import Answer
from poller.simulator.testing import FakeClock
from poller.tracking import Policy

POLICY = Policy(poll_interval_min_s=1.0, poll_interval_max_s=8.0)
#: The worker's clock at the start of each test; the cluster's is two days behind.
LOCAL = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()
BEHIND_S = 2 * 86400
A, B, C = (f"00000000-0000-0000-0000-00000000000{c}" for c in "abc")
ACTIVE = {"state": "queued|running|paused"}


def job(uuid: str, state: str, message: str | None = None, **times: str) -> Job:
    raw: dict[str, Any] = {"uuid": uuid, "state": state, **times}
    if message is not None:
        raw["message"] = message
    return Job(raw)


class Cluster:
    """The feed's one call, scripted: what each query returns, and every query asked."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.active: list[Job] = []
        self.ends: list[Job] = []
        self.dated = True
        self.failure: Exception | None = None
        self.calls: list[tuple[str, dict[str, str]]] = []
        #: Called while a query is under way.
        self.during: Callable[[], None] = lambda: None

    async def query(self, filters: Mapping[str, str], *, endpoint: str) -> Answer:
        self.calls.append((endpoint, dict(filters)))
        self.during()
        if self.failure is not None:
            raise self.failure
        jobs = self.active if endpoint == "active" else self.ends
        return Answer(list(jobs), self.clock() - BEHIND_S if self.dated else None)


def feed_of(
    cluster: Cluster, watched: set[str] | None = None, policy: Policy = POLICY
) -> ChangeFeed:
    return ChangeFeed(
        cluster,
        policy,
        watched=(watched or set()).__contains__,
        purge_window_s=300,
        clock=cluster.clock,
    )


async def run_due(feed: ChangeFeed, clock: FakeClock) -> dict[str, Round]:
    return {kind: await feed.run(kind) for kind in feed.due(clock())}


async def drive(feed: ChangeFeed, clock: FakeClock, until_s: float) -> list[tuple[float, str]]:
    """Tick every 0.5 s, running what is due and handing its news over, as the scheduler does:
    when each query was made, from the start."""
    made = []
    start = clock()
    while clock() - start <= until_s:
        for kind, found in (await run_due(feed, clock)).items():
            made.append((clock() - start, kind))
            for record in found.news:
                feed.view.handed_over(record)
        clock.advance(0.5)
    return made


# --- the queries --------------------------------------------------------------------------------


async def test_the_first_query_reads_the_active_set_then_ends_reach_back_300_s_on_its_clock() -> (
    None
):
    """No window before the cluster's clock is known; then end_time>= its now less 300 s."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    assert feed.due(clock()) == ["active"]
    await feed.run("active")
    assert feed.due(clock()) == ["ends"]
    await feed.run("ends")
    assert cluster.calls == [
        ("active", ACTIVE),
        ("ends", {"end_time": ">=2026-11-28T11:55:00+00:00"}),
    ]


async def test_each_window_starts_a_second_before_the_last_answer_in_the_clusters_zone() -> None:
    """The cluster writes -05:00 times: so is T, one second before its last Date."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.ends = [job(A, "success", end_time="2026-11-28T06:54:00-05:00")]
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=1.5)
    assert [filters for kind, filters in cluster.calls if kind == "ends"] == [
        {"end_time": ">=2026-11-28T11:55:00+00:00"},  # at 0.5 s: the zone is not known yet
        {"end_time": ">=2026-11-28T06:59:59-05:00"},  # at 1.5 s: the answer at 0.5 s, less 1 s
    ]


async def test_without_any_date_header_no_ends_window_is_written_on_the_workers_clock() -> None:
    """A proxy strips every Date and no job shows a time: the cluster's time is unknown, so no ends
    window is asked for."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.dated = False
    cluster.ends = [job(A, "success", end_time="2026-11-28T11:58:30+00:00")]
    feed = feed_of(cluster)
    await run_due(feed, clock)
    assert feed.due(clock()) == []  # no cluster time known: no window to ask for
    assert feed.cluster_now() is None


async def test_without_any_date_header_the_latest_time_shown_is_the_clusters_now() -> None:
    """A proxy strips every Date: the latest start or end time an answer shows bounds the cluster's
    now, so the first window reaches back 300 s from the start time the active set showed, and the
    next starts a second before the latest end."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.dated = False
    cluster.active = [job(A, "running", start_time="2026-11-28T06:59:30-05:00")]
    cluster.ends = [
        job(
            B,
            "success",
            start_time="2026-11-28T06:59:50-05:00",
            end_time="2026-11-28T07:00:10-05:00",
        )
    ]
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=1.5)
    assert [filters for kind, filters in cluster.calls if kind == "ends"] == [
        {"end_time": ">=2026-11-28T06:54:30-05:00"},  # at 0.5 s: A's start, less 300 s
        {"end_time": ">=2026-11-28T07:00:09-05:00"},  # at 1.5 s: B's end, less 1 s
    ]
    # B's end, shown at 0.5 s, is the latest time seen: 1.5 s later (now), the cluster is 1.5 s on.
    ended = datetime(2026, 11, 28, 12, 0, 10, tzinfo=UTC).timestamp()
    assert feed.cluster_now() == pytest.approx(ended + 1.5, abs=1e-6)


# --- timing -------------------------------------------------------------------------------------


async def test_ends_every_tick_and_the_active_set_backing_off_while_nothing_watched_moves() -> None:
    """Ends every poll_interval_min; active rounds 1, 2, 4, 8, 8 s apart (the cap)."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.active = [job(A, "running")]
    made = await drive(feed_of(cluster, watched={B}), clock, until_s=31.0)
    assert [t for t, kind in made if kind == "active"] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 31.0]
    assert [t for t, kind in made if kind == "ends"] == [0.5 + n for n in range(31)]


async def test_a_watched_job_changing_brings_the_active_set_back_to_every_tick() -> None:
    """A watched job's new message in a round: the next round poll_interval_min later."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.active = [job(A, "running", "10%"), job(B, "running", "10%")]
    feed = feed_of(cluster, watched={A})
    made = await drive(feed, clock, until_s=7.0)
    # B, changed too but not watched and listed after A, does not undo what A's change says.
    cluster.active = [job(A, "running", "20%"), job(B, "running", "20%")]
    made += [(t + 7.5, k) for t, k in await drive(feed, clock, until_s=10.0)]
    assert [t for t, kind in made if kind == "active"] == [0.0, 1.0, 3.0, 7.0, 15.0, 16.0]


async def test_a_change_of_a_job_nobody_watches_does_not_reset_the_backoff() -> None:
    """Unwatched jobs change all the time on a busy cluster: they cost no extra rounds."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster, watched={B})
    made = []
    for n in range(8):
        cluster.active = [job(A, "running", f"{n}0%")]
        made += [(t + n * 4, k) for t, k in await drive(feed, clock, until_s=3.5)]
    assert [t for t, kind in made if kind == "active"] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 31.0]


@pytest.mark.parametrize(
    ("active_jobs", "gap_s"),
    [(1, 1.0), (500, 1.0), (1000, 2.0), (2000, 4.0), (10_000, 8.0)],
)
async def test_a_large_active_set_is_read_less_often_never_past_the_cap(
    active_jobs: int, gap_s: float
) -> None:
    """2 ms per active job between rounds: a cluster running thousands is not read every tick."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.active = [
        job(f"{n:08x}-0000-0000-0000-000000000000", "running") for n in range(active_jobs)
    ]
    made = await drive(feed_of(cluster), clock, until_s=gap_s)
    assert [t for t, kind in made if kind == "active"] == [0.0, gap_s]


async def test_a_new_watch_brings_the_next_round_forward() -> None:
    """Backed off to 8 s: a new watch changes soon, so the next round is a tick away."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=16.0)  # rounds at 0, 1, 3, 7, 15: the next at 23
    feed.expect_changes(clock())  # at 16.5
    assert feed.due(clock()) == ["ends"]
    clock.advance(1.0)
    assert feed.due(clock()) == ["active"]


async def test_a_new_watch_never_puts_off_a_round_due_sooner() -> None:
    """The next round is half a tick away: a new watch leaves it there."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=0.0)  # the next round at 1.0
    feed.expect_changes(LOCAL + 0.5)
    assert feed.due(LOCAL + 1.0) == ["active", "ends"]


async def test_a_new_watch_during_a_round_brings_the_next_round_forward() -> None:
    """Backed off to 8 s, a watch arrives while the round is under way: the next one a tick later."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=14.5)  # rounds at 0, 1, 3, 7: the next at 15
    clock.now = LOCAL + 15.0
    assert "active" in feed.due(clock())
    cluster.during = lambda: feed.expect_changes(clock())
    await feed.run("active")
    assert "active" not in feed.due(LOCAL + 15.9)
    assert "active" in feed.due(LOCAL + 16.0)


async def test_while_an_ends_query_is_under_way_the_feed_wakes_for_the_next_round() -> None:
    """next_at: the next active round, the ends query under way left out."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=2.0)  # rounds at 0 and 1: the next at 3
    feed.read_now()
    assert feed.due(clock()) == ["active", "ends"]
    await feed.run("active")  # at 2.5: the next round at 6.5
    assert feed.next_at() == LOCAL + 6.5


async def test_a_feed_nobody_has_needed_yet_rests_without_fault() -> None:
    """rest before any query: a record read by uuid goes after 16 s like any other."""
    clock = FakeClock(LOCAL)
    feed = feed_of(Cluster(clock), watched={A})
    assert feed.record(job(A, "running"))  # read by uuid before any round: news
    feed.rest(LOCAL)
    feed.rest(LOCAL + 16.0)
    assert A in feed.view
    feed.rest(LOCAL + 16.5)
    assert A not in feed.view


async def test_without_a_date_on_a_later_answer_the_last_end_moves_the_window() -> None:
    """A Date once, then none: the next window starts a second before the latest end shown."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=0.0)  # the active round, with a Date
    cluster.dated = False
    cluster.ends = [job(A, "success", end_time="2026-11-28T12:00:30+00:00")]
    await drive(feed, clock, until_s=1.0)
    assert [filters for kind, filters in cluster.calls if kind == "ends"] == [
        {"end_time": ">=2026-11-28T11:55:00+00:00"},
        {"end_time": ">=2026-11-28T12:00:29+00:00"},
    ]


async def test_an_end_read_without_end_time_is_purged_on_the_clusters_clock() -> None:
    """Some releases leave end_time out: the cluster's now when it was read dates the end."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster, watched={A})
    await drive(feed, clock, until_s=0.0)  # the cluster's clock is known from here
    feed.record(job(A, "success"))  # read by uuid at 0.5
    await drive(feed, clock, until_s=301.0)  # ends every second: until 301.5 s after the end
    assert A in feed.view
    await drive(feed, clock, until_s=1.0)
    assert A not in feed.view


async def test_read_now_makes_both_queries_due_at_once() -> None:
    """A burst of watches, or discovery taking over: active set and ends, now."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=3.0)
    feed.read_now()
    assert feed.due(clock()) == ["active", "ends"]


async def test_a_query_under_way_is_not_started_again() -> None:
    """due hands each query out once until it ends; next_at then skips it."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=1.0)
    feed.read_now()
    assert feed.due(clock()) == ["active", "ends"]
    assert feed.busy
    assert feed.due(clock() + 100) == []
    assert feed.next_at() == clock() + POLICY.poll_interval_max_s  # nothing else to wait for
    await feed.run("ends")
    assert feed.busy
    await feed.run("active")
    assert not feed.busy


@pytest.mark.parametrize(("kind", "next_s"), [("active", 8.0), ("ends", 1.0)])
async def test_a_failed_query_is_made_again_on_its_schedule(kind: str, next_s: float) -> None:
    """ONTAP unreachable: the error goes up; active again after poll_interval_max, ends a tick."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=0.5)  # both have run once: active at 1.0, ends at 1.5
    clock.now = LOCAL + 2.0
    assert kind in feed.due(clock())
    cluster.failure = OntapUnavailable("down", error=error_body("down"))
    with pytest.raises(OntapUnavailable):
        await feed.run(kind)
    assert kind not in feed.due(LOCAL + 2.0 + next_s - 0.1)
    assert kind in feed.due(LOCAL + 2.0 + next_s)


# --- what the answers say -----------------------------------------------------------------------


async def test_a_round_reports_news_and_the_running_jobs_it_no_longer_lists() -> None:
    """News once; a running job missing from the next round is unlisted, an ended one is not."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    feed = feed_of(cluster, watched={A, B})
    cluster.active = [job(A, "running"), job(B, "running")]
    first = await feed.run(*feed.due(clock()))
    assert [j.uuid for j in first.news] == [A, B] and first.unlisted == []
    for record in first.news:
        feed.view.handed_over(record)

    cluster.ends = [job(B, "success", end_time="2026-11-28T12:00:00+00:00")]
    assert [j.uuid for j in (await feed.run(*feed.due(clock()))).news] == [B]
    cluster.active = [job(C, "queued")]
    feed.read_now()
    second = await feed.run("active")
    assert [j.uuid for j in second.news] == [C]
    assert second.unlisted == [A]


async def test_ends_ontap_has_purged_leave_the_view() -> None:
    """After each ends round: ends older than the purge window (and its margin) are dropped."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.ends = [job(A, "success", end_time="2026-11-28T11:59:00+00:00")]
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=1.0)
    cluster.ends = []
    assert A in feed.view
    clock.now = LOCAL + 240.5
    await run_due(feed, clock)
    assert A in feed.view  # ended 60 s before the start: 300.5 s ago
    clock.now = LOCAL + 242.0
    await run_due(feed, clock)
    assert A not in feed.view


async def test_resting_forgets_the_view_after_twice_poll_interval_max() -> None:
    """Nobody needs the feed: its view goes after 16 s of rest, and its next window looks back."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.active = [job(A, "running")]
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=1.0)
    feed.rest(LOCAL + 2.0)
    feed.rest(LOCAL + 18.0)
    assert A in feed.view
    feed.rest(LOCAL + 18.5)
    assert A not in feed.view
    feed.read_now()
    assert feed.due(LOCAL + 18.5) == ["active"]  # no window: it opens with the next answer


async def test_a_query_in_between_restarts_the_rest() -> None:
    """Rest, a need for the feed, rest again: 16 s counted from the second rest."""
    clock = FakeClock(LOCAL)
    cluster = Cluster(clock)
    cluster.active = [job(A, "running")]
    feed = feed_of(cluster)
    await drive(feed, clock, until_s=1.0)
    feed.rest(LOCAL + 2.0)
    feed.due(LOCAL + 10.0)
    feed.rest(LOCAL + 11.0)
    feed.rest(LOCAL + 20.0)
    assert A in feed.view
    feed.rest(LOCAL + 27.5)
    assert A not in feed.view
