"""Per-cluster reads: what to ask ONTAP, and when.

One ``ClusterScheduler`` per configured cluster. It makes every call to ONTAP and owns all of their
timing; what an answer means for watches is the dispatcher's business (the ``Sink``), which answers
each observation with an explicit ``Applied``. The scheduler never sees a watch.

With the change feed (``feed = true``, the default) a fixed number of calls learns what changed on
the whole cluster, however many jobs are watched:

- every ``poll_interval_min`` (a tick): ``end_time=>=T``, the jobs that ended since T, on the
  cluster's own clock. An end reaches subscribers within about a tick.
- ``state=queued|running|paused``, the active set, for the changes between start and end: after
  ``poll_interval_min``, the gap growing to ``poll_interval_max`` while no watched job changes (a
  change, or a new watch, resets it), as one job's reads would. A round returns every active job,
  so a large active set is re-read less often (``_REFRESH_S_PER_JOB`` per active job), and never
  less often than every ``poll_interval_max``; a burst of new watches brings a round forward.

A watched job that no feed answer accounts for (new since the last round, gone from the active set,
in a state outside it) is read by uuid, many per call (``reads.UuidReads``); a 404 is how a job
becomes ``not_found``. A cluster that refuses the feed's filters (400), or says ``feed = false``,
is read by uuid alone, each job on its own backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, Protocol

import structlog

from poller.errors import FilterRefused, OntapRefused, OntapUnavailable
from poller.feed import ACTIVE_STATES, PURGE_WINDOW_S, ClusterClock, EndsWindow, JobView
from poller.handover import Handovers, Sink
from poller.metrics import Metrics
from poller.models import Job
from poller.ontap import Answer
from poller.reads import UuidReads
from poller.tracking import Observation, Policy, Refused, Seen, next_interval

log = structlog.get_logger(__name__)
#: Jobs due within this fraction of poll_interval_min are read together with those due now.
_COALESCE_FRACTION: Final = 0.25
_COALESCE_MAX_S: Final = 0.5
_IDLE_WAKE_S: Final = 5.0
#: The gap between active rounds is at least this per active job: a round costs ONTAP one record
#: per active job, so thousands of active jobs are re-read every few seconds, not every tick.
_REFRESH_S_PER_JOB: Final = 0.002


class Reader(Protocol):
    """The calls to ONTAP the scheduler makes (``ontap.OntapClient``)."""

    cluster: str

    async def read(self, job_uuids: Sequence[str]) -> dict[str, Observation]: ...

    async def query(self, filters: Mapping[str, str], *, endpoint: str) -> Answer: ...


class ClusterScheduler:
    """Reads one cluster's jobs and hands what changed to the sink."""

    def __init__(
        self,
        ontap: Reader,
        sink: Sink,
        policy: Policy,
        *,
        feed: bool = True,
        batch: bool = True,
        batch_size: int = 101,
        purge_window_s: float = PURGE_WINDOW_S,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = ontap.cluster
        self._ontap = ontap
        self._sink = sink
        self._policy = policy
        self._feed = feed
        self._purge_window_s = purge_window_s
        self._metrics = metrics
        self._clock = clock
        self._coalesce_s = min(policy.poll_interval_min_s * _COALESCE_FRACTION, _COALESCE_MAX_S)
        self._reads = UuidReads(
            policy, batch_size=batch_size if batch else 1, coalesce_s=self._coalesce_s
        )
        self._view = JobView(purge_window_s)
        self._cluster_clock = ClusterClock()
        self._window = EndsWindow()
        self._handovers = Handovers(
            sink,
            self._view,
            interest=self._interest,
            ended=self.drop,
            spawn=self._spawn,
            wake=self.wake,
            clock=clock,
        )
        self._discovering = False
        self._next_ends_at = self._next_active_at = self._last_active_at = 0.0
        self._ends_running = self._active_running = self._burst = False
        #: The backoff of active rounds, whether a watched job changed since the last one, and
        #: how many jobs the last one returned.
        self._active_interval_s: float | None = None
        self._active_moved = False
        self._active_size = 0
        self._idle_since: float | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        if metrics is not None:
            metrics.feed_enabled.labels(self.cluster).set(1 if feed else 0)

    # -- what to read ----------------------------------------------------------------------------

    def want(self, job_uuid: str, *, fresh: bool) -> None:
        """Keep reading a watched job; ``fresh``: the dispatcher needs its first observation."""
        self._reads.add(job_uuid)
        if self._accounted(job_uuid):
            # A new record needs the job as it is; returning watches need what changed meanwhile.
            known = self._view.get(job_uuid) if fresh else self._view.news(job_uuid)
            if known is not None:
                self._handovers.offer(job_uuid, Seen(known), discovered=False)
        elif not self._reads.in_flight(job_uuid):
            # Not read at once: requests come in bursts, and a short wait reads the burst together.
            now = self._clock()
            self._reads.schedule(job_uuid, now + self._coalesce_s)
            # A new job changes soon after it starts: the next active round comes early too.
            self._active_moved = True
            self._next_active_at = min(
                self._next_active_at, max(now, self._last_active_at) + self._active_gap_s(None)
            )
        self._wake.set()

    def drop(self, job_uuid: str) -> None:
        """Nobody waits on the job any longer (its watches ended, or are being re-enqueued)."""
        self._reads.remove(job_uuid)
        self._handovers.forget(job_uuid)
        if not self._feed:
            self._view.forget(job_uuid)

    def discover(self, on: bool) -> None:
        """Publish every job of the cluster (this worker holds the discovery lease), or stop."""
        if on == self._discovering:
            return
        self._discovering = on
        if not on:
            self._sink.forget_discovered()
            return
        if not self._feed:
            log.warning("discovery.without_feed", cluster=self.cluster)
        # Announce everything ONTAP still holds: the active set, and the ends of its purge window.
        self._view.forget_handovers()
        if (cluster_now := self._cluster_clock.now(self._clock())) is not None:
            self._window.open(cluster_now, self._purge_window_s)
        self._next_ends_at = self._next_active_at = 0.0
        self._wake.set()

    def reading(self, job_uuid: str) -> bool:
        """Whether a read that may tell about the job is under way, or what it read is."""
        if self._reads.in_flight(job_uuid) or self._handovers.busy(job_uuid):
            return True
        return self._accounted(job_uuid) and (self._ends_running or self._active_running)

    def wake(self) -> None:
        self._wake.set()

    async def wait_idle(self) -> None:
        """Wait for the calls and hand-overs under way now to finish."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def _accounted(self, job_uuid: str) -> bool:
        return self._feed and self._view.accounts_for(job_uuid)

    def _feeding(self) -> bool:
        return self._feed and (len(self._reads) > 0 or self._discovering)

    def _interest(self, job_uuid: str) -> bool | None:
        """None: nobody wants the job; False: it is watched; True: only discovered."""
        if job_uuid in self._reads:
            return False
        return True if self._discovering else None

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until cancelled; calls and hand-overs under way are cancelled with it."""
        structlog.contextvars.bind_contextvars(cluster=self.cluster)
        try:
            while True:
                now = self._clock()
                self._tick(now)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._next_wakeup(now) - self._clock())):
                        await self._wake.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _tick(self, now: float) -> None:
        if self._feeding():
            self._idle_since = None
            if not self._active_running and now >= self._next_active_at:
                self._spawn(self._active_round())
            window_open = self._window.since is not None
            if not self._ends_running and now >= self._next_ends_at and window_open:
                self._spawn(self._ends_round())
        elif self._feed:
            self._rest(now)
        if not self._burst:
            self._read_due(now)
        self._handovers.offer_again(now)

    def _rest(self, now: float) -> None:
        """No watch and no discovery: the feed stops, and forgets its view after a while."""
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since > 2 * self._policy.poll_interval_max_s and len(self._view):
            self._view.clear()
            self._window = EndsWindow()

    def _next_wakeup(self, now: float) -> float:
        times = [now + _IDLE_WAKE_S, self._reads.next_due(), self._handovers.next_at()]
        if self._feeding():
            if not self._active_running:
                times.append(self._next_active_at)
            if not self._ends_running and self._window.since is not None:
                times.append(self._next_ends_at)
        return min(t for t in times if t is not None)

    # -- the change feed -------------------------------------------------------------------------

    async def _active_round(self) -> None:
        self._active_running = True
        self._last_active_at = started = self._clock()
        round_ = self._view.begin_round()
        self._active_moved = False
        try:
            answer = await self._feed_call({"state": "|".join(ACTIVE_STATES)}, endpoint="active")
        finally:
            self._active_running = self._burst = False
            self._next_active_at = started + self._policy.poll_interval_max_s
            self._wake.set()
        if answer is None:
            return
        for job in answer.jobs:
            self._seen(job)
        self._active_interval_s = next_interval(
            self._active_interval_s, moved=self._active_moved, policy=self._policy
        )
        self._active_size = len(answer.jobs)
        self._next_active_at = started + self._active_gap_s(self._active_interval_s)
        for job_uuid in self._view.end_round(round_):
            if job_uuid not in self._reads:
                self._view.forget(job_uuid)
            else:
                # Gone from the active set: the next ends window should say it ended; if it
                # does not, a read by uuid tells what became of it.
                self._reads.schedule(job_uuid, self._clock() + self._policy.poll_interval_min_s)

    async def _ends_round(self) -> None:
        self._ends_running = True
        started = self._clock()
        since = self._window.since
        assert since is not None, "an ends round needs a window"
        try:
            filters = {"end_time": ">=" + self._cluster_clock.render(since)}
            answer = await self._feed_call(filters, endpoint="ends")
        finally:
            self._ends_running = False
            self._next_ends_at = started + self._policy.poll_interval_min_s
            self._wake.set()
        if answer is None:
            return
        self._window.advance(answer.date, answer.jobs)
        for job in answer.jobs:
            self._seen(job)
        if (cluster_now := self._cluster_clock.now(self._clock())) is not None:
            self._view.forget_purged(cluster_now)

    async def _feed_call(self, filters: dict[str, str], *, endpoint: str) -> Answer | None:
        """One feed query; its failures are dealt with here, and give None."""
        try:
            answer = await self._ontap.query(filters, endpoint=endpoint)
        except FilterRefused as exc:
            self._fall_back(exc)
            return None
        except OntapRefused as exc:
            # 401 or 403: the credentials no longer work, for this job or any other.
            log.warning("feed.refused", endpoint=endpoint, error=str(exc))
            for job_uuid in self._reads:
                self._handovers.offer(job_uuid, Refused(exc.error), discovered=False)
            return None
        except OntapUnavailable as exc:
            log.warning("feed.call_failed", endpoint=endpoint, error=str(exc))
            self._sink.note_reachable(exc.error)
            return None
        self._cluster_clock.observe(answer.date, self._clock())
        self._sink.note_reachable(None)
        cluster_now = self._cluster_clock.now(self._clock())
        if self._window.since is None and cluster_now is not None:
            # The feed starts: its first window reaches back over what ONTAP still holds.
            self._window.open(cluster_now, self._purge_window_s)
        return answer

    def _fall_back(self, exc: FilterRefused) -> None:
        """The cluster refuses the feed's filters: read every watched job by uuid from now on."""
        if not self._feed:
            return
        self._feed = False
        log.warning("feed.filters_refused", error=str(exc), fallback="uuid batches")
        if self._metrics is not None:
            self._metrics.feed_enabled.labels(self.cluster).set(0)
        self._view.clear()
        now = self._clock()
        for job_uuid in self._reads.parked():
            self._reads.schedule(job_uuid, now)

    def _active_gap_s(self, interval_s: float | None) -> float:
        """The gap before the next active round: the backoff, widened for a large active set."""
        backoff = interval_s or self._policy.poll_interval_min_s
        widened = max(backoff, self._active_size * _REFRESH_S_PER_JOB)
        return min(widened, self._policy.poll_interval_max_s)

    def _seen(self, job: Job) -> None:
        """A record from a feed answer: hand it over when it is news and somebody wants it."""
        self._cluster_clock.learn_zone(job)
        if not self._view.record(job, self._cluster_clock.now(self._clock())):
            return
        interest = self._interest(job.uuid)
        self._active_moved |= interest is False
        if interest is not None:
            self._handovers.offer(job.uuid, Seen(job), discovered=interest)
        elif not self._sink.holds(job.uuid):
            self._view.handed_over(job)  # nobody waits on it: nothing to publish
        # Otherwise its watches are away being re-enqueued: the news waits for them (``want``).

    # -- reads by uuid ---------------------------------------------------------------------------

    def _read_due(self, now: float) -> None:
        due = self._reads.take_due(now, self._accounted)
        recent = now - self._last_active_at < self._policy.poll_interval_min_s
        if self._feed and len(due) > self._reads.batch_size and not recent:
            # A burst of new watches: one active round accounts for most of them in fewer calls
            # than reading each; what it does not account for is read by uuid after it.
            self._burst = True
            self._next_active_at = now
            for job_uuid in due:
                self._reads.schedule(job_uuid, now)
            return
        for chunk in self._reads.start(due):
            self._spawn(self._read(chunk))

    async def _read(self, job_uuids: list[str]) -> None:
        read_at = self._clock()
        try:
            observations = await self._ontap.read(job_uuids)
        except BaseException:
            self._reads.abandoned(job_uuids, self._clock())
            raise
        finally:
            self._wake.set()
        for job_uuid, observation in observations.items():
            if job_uuid not in self._reads:
                self._reads.finished(job_uuid, observation, moved=False, read_at=read_at, now=0)
                continue  # no longer watched
            moved = True
            if isinstance(observation, Seen):
                self._cluster_clock.learn_zone(observation.job)
                cluster_now = self._cluster_clock.now(read_at)
                moved = self._view.record(observation.job, cluster_now)
            if moved:
                self._handovers.offer(job_uuid, observation, discovered=False)
            self._reads.finished(
                job_uuid,
                observation,
                moved=moved and isinstance(observation, Seen),
                read_at=read_at,
                now=self._clock(),
            )
            if isinstance(observation, Seen) and self._accounted(job_uuid):
                self._reads.park(job_uuid)  # the feed tells its next change

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("scheduler.task_failed", cluster=self.cluster, error=repr(exc), exc_info=exc)
