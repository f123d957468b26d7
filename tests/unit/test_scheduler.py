"""The scheduler: what it asks ONTAP and when, with the feed and without, against the simulator.

Each test runs one cluster's scheduler and dispatcher (``tests.rig``) against the simulator in
process, on a cluster clock two days behind the worker's that only the test moves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import pytest

from poller.errors import OntapRefused, OntapUnavailable
from poller.models import Job
from poller.ontap import Answer, batch_size
from poller.scheduler import ClusterScheduler
from poller.simulator import Simulator
from poller.simulator.testing import FakeClock
from poller.tracking import Observation, Policy, Refused, Seen
from tests.fakes import FakeOutbox, ScriptedCluster, ScriptedSink
from tests.rig import PASSWORD, USER, cluster_rig

RUNNING = [{"after": 0, "state": "running", "message": "Working"}]


def timeline(end_after_s: float, state: str = "success") -> list[dict[str, object]]:
    return [*RUNNING, {"after": end_after_s, "state": state, "message": "Done"}]


def jobs(sim: Simulator, n: int, tl: list[dict[str, object]] | None = None) -> list[str]:
    return [
        sim.create_job(uuid=str(uuid.UUID(int=i + 1)), timeline=tl or RUNNING) for i in range(n)
    ]


# --- reads by uuid alone (feed = false, or a cluster that refuses the feed) ---------------------


async def test_without_the_feed_a_burst_of_watches_is_read_in_full_collection_calls() -> None:
    """250 new watches: three uuid=a|b|… calls as full as a short URL allows, not 250 GETs."""
    full = batch_size("http://ontap")
    # A coalescing interval of 0.1 s: the 250 watches arrive well within it, even on a busy machine.
    async with cluster_rig(feed=False, poll_interval_min=0.4, poll_interval_max=0.8) as rig:
        rig.watch_jobs(jobs(rig.sim, 250))
        await rig.until(lambda: len(rig.outbox.events) == 250)

        sizes = [len(q["uuid"].split("|")) for q in rig.transport.queries()]
        assert sorted(sizes) == [250 - 2 * full, full, full]
        assert rig.transport.singles() == []


async def test_without_the_feed_jobs_read_together_are_read_together_again() -> None:
    """Unchanged jobs back off together: their next reads are full collection calls too."""
    # The checkpoint copies are refused, so the watches stay held: this is about the backoff
    # alone (tests/unit/test_reads.py: a watch coming back keeps its place on the schedule).
    outbox = FakeOutbox(fail_requeue=True)
    async with cluster_rig(
        feed=False, outbox=outbox, poll_interval_min=0.4, poll_interval_max=0.8
    ) as rig:
        rig.watch_jobs(jobs(rig.sim, 150))
        await rig.until(lambda: len(rig.transport.queries()) >= 9)

        sizes = [len(q["uuid"].split("|")) for q in rig.transport.queries()]

    # Read in rounds of all 150: each round in as many calls as the first, none a straggler.
    rounds: list[list[int]] = [[]]
    for size in sizes:
        rounds[-1].append(size)
        if sum(rounds[-1]) == 150:
            rounds.append([])
    assert len(rounds) >= 3, sizes
    assert [sorted(r) for r in rounds[1:-1]] == [sorted(rounds[0])] * (len(rounds) - 2)
    assert len(rounds[0]) <= 3  # 150 jobs fit in two calls; a third only if they came in two bursts


async def test_with_batch_false_each_job_gets_its_own_get() -> None:
    """feed = false and batch = false: one GET per job and read, no collection call."""
    async with cluster_rig(feed=False, batch=False) as rig:
        rig.watch_jobs(jobs(rig.sim, 3))
        await rig.until(lambda: len(rig.outbox.events) == 3)
        assert rig.transport.queries() == []
        assert sorted(set(rig.transport.singles())) == sorted(jobs_uuids(3))


def jobs_uuids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


async def test_an_unknown_job_ends_as_not_found() -> None:
    """A uuid ONTAP does not know: the collection leaves it out, one GET says 404."""
    async with cluster_rig() as rig:
        job = str(uuid.uuid4())
        rig.watch_jobs([job])
        await rig.until(lambda: rig.finished(job))
        assert rig.outbox.routing_keys() == ["watch.c1.not_found"]
        assert rig.transport.singles() == [job]


async def test_an_end_is_published_while_other_changes_wait_their_turn() -> None:
    """With 200 first sightings held up at the broker, a job's end still goes out at once."""
    async with cluster_rig(feed=False) as rig:
        rig.outbox.held_states = frozenset({"running"})
        running = jobs(rig.sim, 200)
        ended = rig.sim.create_job(timeline=[{"after": 0, "state": "success"}])
        rig.watch_jobs([*running, ended])
        await rig.until(lambda: "job.c1.success" in rig.outbox.routing_keys())
        assert rig.outbox.waiting >= 64  # the first sightings were waiting all along
        rig.outbox.gate.set()


# --- the change feed ----------------------------------------------------------------------------


@pytest.mark.parametrize("watched", [20, 400])
async def test_calls_per_tick_do_not_grow_with_the_jobs_watched(watched: int) -> None:
    """20 or 400 running jobs: after the first reads, a second of ticks costs the same calls."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.2) as rig:
        rig.watch_jobs(jobs(rig.sim, watched))
        await rig.until(lambda: len(rig.outbox.events) == watched)
        await asyncio.sleep(0.3)
        before = len(rig.transport.requests)
        await asyncio.sleep(1.0)
        calls = len(rig.transport.requests) - before
        by_filter = {next(iter(q), "") for q in rig.transport.queries()[-calls:]}

    # About 20 ends windows and 5 active rounds a second, whatever the number of jobs.
    assert 15 <= calls <= 40, calls
    assert by_filter <= {"end_time", "state"}


async def test_an_end_is_seen_within_a_tick_whatever_poll_interval_max_is() -> None:
    """poll_interval_max 30 s: the end still comes with the next ends window, a tick later."""
    async with cluster_rig(poll_interval_min=0.1, poll_interval_max=30.0) as rig:
        (job,) = jobs(rig.sim, 1, timeline(10))
        rig.watch_jobs([job])
        await rig.until(lambda: rig.outbox.routing_keys() == ["job.c1.running"])
        await asyncio.sleep(0.5)  # the active set's backoff is now far beyond the end

        reads = rig.transport.by_uuid()
        rig.clock.advance(10)
        started = asyncio.get_running_loop().time()
        await rig.until(lambda: rig.finished(job))
        took = asyncio.get_running_loop().time() - started

    assert rig.outbox.routing_keys() == ["job.c1.running", "job.c1.success"]
    assert took < 0.5, f"the end took {took:.2f} s to arrive with a tick of 0.1 s"
    assert rig.transport.by_uuid() == reads  # an ends window told it, not a read by uuid


@pytest.mark.parametrize(
    ("offset_s", "zone"),
    [(-7 * 60, "UTC"), (7 * 60, "UTC"), (-3600, "America/New_York"), (5400, "+05:30")],
)
async def test_the_window_is_on_the_clusters_clock_and_in_its_zone(
    offset_s: float, zone: str
) -> None:
    """A cluster 7 minutes behind or ahead, in its own zone: every end is seen within a tick."""
    clock = FakeClock()
    sim = Simulator(
        username=USER, password=PASSWORD, clock=clock, clock_offset_s=offset_s, timezone=zone
    )
    async with cluster_rig(sim=sim, poll_interval_min=0.05, poll_interval_max=30.0) as rig:
        tracked = jobs(sim, 5, timeline(10, "failure"))
        rig.watch_jobs(tracked)
        await rig.until(lambda: len(rig.outbox.events) == 5)
        reads = rig.transport.by_uuid()
        clock.advance(11)
        await rig.until(lambda: all(rig.finished(j) for j in tracked), timeout_s=2.0)

    assert rig.outbox.routing_keys().count("job.c1.failure") == 5
    assert rig.transport.by_uuid() == reads  # the ends windows saw every end; none was read by uuid


async def test_a_window_taken_from_the_workers_clock_would_miss_every_end() -> None:
    """The premise: 7 minutes behind, end_time>=<worker's now> finds nothing the feed finds."""
    import time

    from poller.feed import ClusterClock

    clock = FakeClock(now=time.time())
    sim = Simulator(username=USER, password=PASSWORD, clock=clock, clock_offset_s=-420)
    async with cluster_rig(sim=sim) as rig:
        (job,) = jobs(sim, 1, timeline(1))
        clock.advance(2)
        worker_window = ClusterClock().render(time.time() - 2)
        answer = await rig.cluster.scheduler._ontap.query(
            {"end_time": ">=" + worker_window}, endpoint="ends"
        )
        assert answer.jobs == []
        rig.watch_jobs([job])
        await rig.until(lambda: rig.finished(job))
    assert rig.outbox.routing_keys() == ["job.c1.success"]


async def test_jobs_nobody_watches_are_never_published() -> None:
    """Active and recently ended jobs of the cluster stay unpublished; the watched one is."""
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
            jobs(rig.sim, 30, timeline(1))
            watched = rig.sim.create_job(timeline=timeline(3))
            rig.clock.advance(2)  # the others have ended, recently
            rig.watch_jobs([watched])
            await rig.until(lambda: rig.outbox.routing_keys() == ["job.c1.running"])
            rig.clock.advance(2)
            await rig.until(lambda: rig.finished(watched))
            await asyncio.sleep(0.3)

    assert {e.headers["ce-subject"] for e in rig.outbox.events} == {watched}
    assert [e for e in logs if e["log_level"] == "error"] == []  # no task failed on the way


async def test_a_cluster_that_refuses_the_filters_is_read_by_uuid_and_says_so_once() -> None:
    """400 to the feed: one warning, the metric at 0, and every watch still ends."""
    clock = FakeClock()
    sim = Simulator(username=USER, password=PASSWORD, clock=clock, refuse_filters=True)
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with cluster_rig(sim=sim) as rig:
            watches = rig.watch_jobs(jobs(sim, 5, timeline(1)))
            await rig.until(lambda: len(rig.outbox.events) == 5)
            clock.advance(2)
            await rig.until(lambda: all(rig.finished(w.request.uuid) for w in watches))
            feed_enabled = rig.metrics.feed_enabled.labels("c1")._value.get()

    assert [e["event"] for e in logs].count("feed.filters_refused") == 1
    (refused,) = [e for e in logs if e["event"] == "feed.filters_refused"]
    assert refused["error"].startswith("HTTP 400: ") and refused["fallback"] == "uuid batches"
    assert feed_enabled == 0
    assert rig.outbox.routing_keys().count("job.c1.success") == 5
    assert "uuid" in rig.transport.queries()[-1]


async def test_the_active_round_follows_every_page() -> None:
    """A cluster that answers 3 records a page: every watched job is still accounted for."""
    clock = FakeClock()
    sim = Simulator(username=USER, password=PASSWORD, clock=clock, max_page=3)
    async with cluster_rig(sim=sim, poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        rig.watch_jobs(jobs(sim, 10))
        await rig.until(lambda: len(rig.outbox.events) == 10)
        await asyncio.sleep(0.3)
        reads_before = (
            len(rig.transport.singles()),
            sum("uuid" in q for q in rig.transport.queries()),
        )
        await asyncio.sleep(0.5)
        reads_after = (
            len(rig.transport.singles()),
            sum("uuid" in q for q in rig.transport.queries()),
        )
        pages = [q for q in rig.transport.queries() if q.get("state") and "offset" in q]

    assert pages, "no next page was followed"
    assert reads_after == reads_before  # no job fell out of the feed to be read one by one


async def test_every_call_carries_the_client_app_header() -> None:
    """X-Dot-Client-App: ontap-job-poller/<version> on reads, batches and feed queries alike."""
    from poller import __version__

    async with cluster_rig() as rig:
        watches = rig.watch_jobs([*jobs(rig.sim, 3, timeline(1)), str(uuid.uuid4())])
        rig.clock.advance(2)
        await rig.until(lambda: all(rig.finished(w.request.uuid) for w in watches))
    assert rig.client_apps() == {f"ontap-job-poller/{__version__}"}


async def test_intermediate_states_are_published_in_order() -> None:
    """queued, running, paused, running, success: each change once, in order, by the feed."""
    steps = [
        {"after": 0, "state": "queued"},
        {"after": 1, "state": "running"},
        {"after": 2, "state": "paused"},
        {"after": 3, "state": "running"},
        {"after": 4, "state": "success"},
    ]
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        job = rig.sim.create_job(timeline=steps)
        rig.watch_jobs([job])
        for n in range(1, 5):
            await rig.until(lambda n=n: len(rig.outbox.events) == n)
            await asyncio.sleep(0.15)  # the next active round has passed
            rig.clock.advance(1)
        await rig.until(lambda: rig.finished(job))
    assert rig.outbox.routing_keys() == [f"job.c1.{s['state']}" for s in steps]


async def test_jobs_the_feed_accounted_for_are_read_by_uuid_once_the_filters_are_refused() -> None:
    """A proxy put in front of a working cluster: the watched jobs the feed told of still end."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        watches = rig.watch_jobs(jobs(rig.sim, 5, timeline(10)))
        await rig.until(lambda: len(rig.outbox.events) == 5)
        await asyncio.sleep(0.3)  # the feed accounts for them: no read by uuid any more
        reads = rig.transport.by_uuid()
        rig.sim.configure(refuse_filters=True)
        rig.clock.advance(11)
        await rig.until(lambda: all(rig.finished(w.request.uuid) for w in watches))
    assert rig.outbox.routing_keys().count("job.c1.success") == 5
    assert rig.transport.by_uuid() > reads


@pytest.mark.parametrize(("feed", "warned"), [(False, 1), (True, 0)])
async def test_discovery_without_the_feed_says_it_cannot_discover(feed: bool, warned: int) -> None:
    """discovery.without_feed, naming the cluster, when discovery meets a cluster read by uuid."""
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with cluster_rig(feed=feed) as rig:
            rig.cluster.scheduler.discover(True)
            rig.cluster.scheduler.discover(True)  # holding the lease already: nothing new to say
    said = [e for e in logs if e["event"] == "discovery.without_feed"]
    assert (
        said
        == [{"event": "discovery.without_feed", "cluster": "c1", "log_level": "warning"}] * warned
    )


# --- against a scripted ONTAP and dispatcher ----------------------------------------------------


class ScriptedOntap:
    """Reads by uuid: the first raises (a bug below the scheduler), the next block until let go."""

    cluster = "c1"

    def __init__(self) -> None:
        self.reads: list[list[str]] = []
        self.gate = asyncio.Event()
        self.read_again = asyncio.Event()

    async def read(self, job_uuids: Sequence[str]) -> dict[str, Observation]:
        self.reads.append(list(job_uuids))
        if len(self.reads) == 1:
            raise RuntimeError("a bug")
        self.read_again.set()
        await self.gate.wait()
        return {u: Seen(Job({"uuid": u, "state": "running"})) for u in job_uuids}

    async def query(self, filters: Mapping[str, str], *, endpoint: str) -> Answer:
        raise AssertionError("the feed is off")


async def test_a_read_that_failed_unexpectedly_is_made_again_and_reading_says_so_meanwhile() -> (
    None
):
    """A read raising is read again at once; while read, and while handed over, it is `reading`."""
    ontap, sink = ScriptedOntap(), ScriptedSink(gate=asyncio.Event())
    policy = Policy(poll_interval_min_s=0.05, poll_interval_max_s=0.2)
    scheduler = ClusterScheduler(ontap, sink, policy, feed=False)
    job = str(uuid.UUID(int=1))
    sink.held.add(job)
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.want(job, fresh=True)
        await asyncio.wait_for(ontap.read_again.wait(), 5)
        assert ontap.reads == [[job], [job]]
        assert scheduler.reading(job)  # the second read is under way
        ontap.gate.set()
        async with asyncio.timeout(5):
            while not sink.applied:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert scheduler.reading(job)  # what it read is on its way to the dispatcher
        sink.gate.set()
        await scheduler.wait_idle()
        await asyncio.sleep(0)
        assert not scheduler.reading(job)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def feed_failing(failure: Exception, job_uuids: list[str]) -> ScriptedCluster:
    """A cluster whose feed queries fail as told, and whose reads by uuid find these jobs running."""
    jobs = {u: Job({"uuid": u, "state": "running"}) for u in job_uuids}
    return ScriptedCluster(clock=time.time, query_failure=failure, jobs=jobs)


async def run_until(scheduler: ClusterScheduler, done: Callable[[], bool]) -> None:
    """Run the scheduler until ``done`` holds (polled: nothing here signals it), 5 s at most."""
    task = asyncio.create_task(scheduler.run())
    try:
        async with asyncio.timeout(5):
            while not done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_feed_query_refused_ends_every_watched_job_with_the_refusal() -> None:
    """401 to the feed: feed.refused, and each watched job handed ONTAP's error as refused."""
    from structlog.testing import capture_logs

    error = {"message": "not authorized for that command", "code": "6"}
    watched = [str(uuid.UUID(int=n)) for n in (1, 2)]
    refusal = OntapRefused("HTTP 401: not authorized for that command", error=error)
    ontap = feed_failing(refusal, watched)
    sink = ScriptedSink()
    policy = Policy(poll_interval_min_s=0.05, poll_interval_max_s=0.2)
    scheduler = ClusterScheduler(ontap, sink, policy)
    with capture_logs() as logs:
        for job in watched:
            scheduler.want(job, fresh=True)
        await run_until(
            scheduler,
            lambda: {u for u, o, _ in sink.applied if isinstance(o, Refused)} == set(watched),
        )
    refusals = [(u, o, d) for u, o, d in sink.applied if isinstance(o, Refused)]
    assert sorted(refusals) == sorted((u, Refused(error), False) for u in watched)
    said = [e for e in logs if e["event"] == "feed.refused"]
    assert said and said[0]["endpoint"] == "active"
    assert said[0]["error"] == "HTTP 401: not authorized for that command"


async def test_a_feed_query_failing_says_so_and_tells_the_dispatcher_the_cluster_is_unreachable() -> (
    None
):
    """Retries spent: feed.call_failed, and the dispatcher told ONTAP's error for deadlines."""
    from structlog.testing import capture_logs

    error = {"message": "Cluster is busy", "code": "2"}
    job = str(uuid.UUID(int=1))
    ontap = feed_failing(OntapUnavailable("Cluster is busy", error=error), [job])
    sink = ScriptedSink()
    policy = Policy(poll_interval_min_s=0.05, poll_interval_max_s=0.2)
    scheduler = ClusterScheduler(ontap, sink, policy)
    with capture_logs() as logs:
        scheduler.want(job, fresh=True)
        await run_until(scheduler, lambda: bool(sink.reachable))
    assert sink.reachable[0] == error
    said = [e for e in logs if e["event"] == "feed.call_failed"]
    assert said[0]["endpoint"] == "active" and said[0]["error"] == "Cluster is busy"
