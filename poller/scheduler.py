"""Per-cluster reads: what to ask ONTAP, and when.

One ``ClusterScheduler`` per configured cluster. It makes every call to ONTAP and owns all of their
timing; what an answer means for watches is the dispatcher's business (the ``Sink``), which answers
each observation with an explicit ``Applied``. The scheduler never sees a watch.

With the change feed (``feed = true``, the default; ``changefeed.ChangeFeed``) a fixed number of
calls learns what changed on the whole cluster, however many jobs are watched: the jobs that ended
since the last answer every tick, the active set less often. A watched job that no feed answer
accounts for (new since the last round, gone from the active set, in a state outside it) is read by
uuid, many per call (``reads.UuidReads``); a 404 is how a job becomes ``not_found``. A cluster that
refuses the feed's filters (400), or says ``feed = false``, is read by uuid alone, each job on its
own backoff. With discovery (``discover``), every job the feed shows is handed over, watched or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

import structlog

from poller.changefeed import ChangeFeed, Round
from poller.errors import FilterRefused, OntapRefused, OntapUnavailable
from poller.feed import PURGE_WINDOW_S
from poller.handover import Handovers, Sink
from poller.metrics import Metrics
from poller.models import Job
from poller.ontap import Answer
from poller.reads import UuidReads
from poller.tasks import Background
from poller.tracking import Observation, Policy, Refused, Seen

log = structlog.get_logger(__name__)
#: Jobs due within this fraction of poll_interval_min are read together with those due now.
_COALESCE_FRACTION: Final = 0.25
_COALESCE_MAX_S: Final = 0.5
_IDLE_WAKE_S: Final = 5.0


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
        self._feed_on = feed
        self._metrics = metrics
        self._clock = clock
        self._coalesce_s = min(policy.poll_interval_min_s * _COALESCE_FRACTION, _COALESCE_MAX_S)
        self._reads = UuidReads(
            policy, batch_size=batch_size if batch else 1, coalesce_s=self._coalesce_s
        )
        self._feed = ChangeFeed(
            ontap,
            policy,
            watched=self._reads.__contains__,
            purge_window_s=purge_window_s,
            clock=clock,
        )
        self._tasks = Background("scheduler", ontap.cluster)
        self._handovers = Handovers(
            sink,
            self._feed.view,
            interest=self._interest,
            ended=self.drop,
            spawn=self._tasks.spawn,
            wake=self.wake,
            clock=clock,
        )
        self._discovering = self._burst = False
        self._wake = asyncio.Event()
        if metrics is not None:
            metrics.feed_enabled.labels(self.cluster).set(1 if feed else 0)

    # -- what to read ----------------------------------------------------------------------------

    def want(self, job_uuid: str, *, fresh: bool) -> None:
        """Keep reading a watched job; ``fresh``: the dispatcher needs its first observation."""
        unplanned = self._reads.add(job_uuid, self._clock())
        # A new record needs the job as it is; returning watches need what changed meanwhile.
        view = self._feed.view
        known = view.get(job_uuid) if fresh else view.news(job_uuid)
        if known is not None:
            self._handovers.offer(job_uuid, Seen(known), discovered=False)
        if unplanned and not self._accounted(job_uuid):
            # Not read at once: requests come in bursts, and a short wait reads the burst together.
            now = self._clock()
            self._reads.schedule(job_uuid, now + self._coalesce_s)
            self._feed.expect_changes(now)
        self._wake.set()

    def drop(self, job_uuid: str) -> None:
        """Nobody waits on the job any longer (its watches ended, or are being re-enqueued)."""
        self._reads.remove(job_uuid, self._clock())
        self._handovers.forget(job_uuid)

    def discover(self, on: bool) -> None:
        """Publish every job of the cluster (this worker holds the discovery lease), or stop."""
        if on == self._discovering:
            return
        self._discovering = on
        if not on:
            self._sink.forget_discovered()
            return
        if not self._feed_on:
            log.warning("discovery.without_feed", cluster=self.cluster)
        # Announce everything ONTAP still holds: the active set, and the ends of its purge window.
        self._feed.view.forget_handovers()
        self._feed.look_back()
        self._feed.read_now()
        self._wake.set()

    def reading(self, job_uuid: str) -> bool:
        """Whether a read that may tell about the job is under way, or what it read is."""
        if self._reads.in_flight(job_uuid) or self._handovers.busy(job_uuid):
            return True
        return self._accounted(job_uuid) and self._feed.busy

    def wake(self) -> None:
        self._wake.set()

    async def wait_idle(self) -> None:
        """Wait for the calls and hand-overs under way now to finish."""
        await self._tasks.wait()

    def _accounted(self, job_uuid: str) -> bool:
        return self._feed_on and self._feed.view.accounts_for(job_uuid)

    def _feeding(self) -> bool:
        return self._feed_on and (len(self._reads) > 0 or self._discovering)

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
            await self._tasks.cancel()

    def _tick(self, now: float) -> None:
        if self._feeding():
            for kind in self._feed.due(now):
                self._tasks.spawn(self._feed_round(kind))
        elif self._feed_on:
            self._feed.rest(now)
        if not self._burst:
            self._read_due(now)
        self._handovers.offer_again(now)
        for job_uuid in self._reads.forget_away(now):
            if not self._feed_on:
                self._feed.view.forget(job_uuid)  # without the feed, the view holds watched jobs

    def _next_wakeup(self, now: float) -> float:
        times = [now + _IDLE_WAKE_S, self._reads.next_due(), self._handovers.next_at()]
        if self._feeding():
            times.append(self._feed.next_at())
        return min(t for t in times if t is not None)

    # -- the change feed -------------------------------------------------------------------------

    async def _feed_round(self, kind: str) -> None:
        """One feed query; its failures are dealt with here."""
        try:
            found = await self._feed.run(kind)
        except FilterRefused as exc:
            self._fall_back(exc)
            return
        except OntapRefused as exc:
            # 401 or 403: the credentials no longer work, for this job or any other.
            log.warning("feed.refused", endpoint=kind, error=str(exc))
            for job_uuid in self._reads:
                self._handovers.offer(job_uuid, Refused(exc.error), discovered=False)
            return
        except OntapUnavailable as exc:
            log.warning("feed.call_failed", endpoint=kind, error=str(exc))
            self._sink.note_reachable(exc.error)
            return
        finally:
            if kind == "active":
                self._burst = False
            self._wake.set()
        self._sink.note_reachable(None)
        self._take(found)

    def _take(self, found: Round) -> None:
        """Hand over what a feed answer says is news, to whoever wants it."""
        for job in found.news:
            self._news(job)
        for job_uuid in found.unlisted:
            if job_uuid not in self._reads:
                self._feed.view.forget(job_uuid)
            else:
                # Gone from the active set: the next ends window should say it ended; if it
                # does not, a read by uuid tells what became of it.
                self._reads.schedule(job_uuid, self._clock() + self._policy.poll_interval_min_s)

    def _news(self, job: Job) -> None:
        interest = self._interest(job.uuid)
        if interest is not None:
            self._handovers.offer(job.uuid, Seen(job), discovered=interest)
        elif not self._sink.holds(job.uuid):
            self._feed.view.handed_over(job)  # nobody waits on it: nothing to publish
        # Otherwise its watches are away being re-enqueued: the news waits for them (``want``).

    def _fall_back(self, exc: FilterRefused) -> None:
        """The cluster refuses the feed's filters: read every watched job by uuid from now on."""
        if not self._feed_on:
            return
        self._feed_on = False
        log.warning("feed.filters_refused", error=str(exc), fallback="uuid batches")
        if self._metrics is not None:
            self._metrics.feed_enabled.labels(self.cluster).set(0)
        self._feed.forget()
        now = self._clock()
        for job_uuid in self._reads.parked():
            self._reads.schedule(job_uuid, now)

    # -- reads by uuid ---------------------------------------------------------------------------

    def _read_due(self, now: float) -> None:
        due = self._reads.take_due(now, self._accounted)
        recent = now - self._feed.last_active_at < self._policy.poll_interval_min_s
        if self._feed_on and len(due) > self._reads.batch_size and not recent:
            # A burst of new watches: one active round accounts for most of them in fewer calls
            # than reading each; what it does not account for is read by uuid after it.
            self._burst = True
            self._feed.read_now()
            for job_uuid in due:
                self._reads.schedule(job_uuid, now)
            return
        for chunk in self._reads.start(due):
            self._tasks.spawn(self._read(chunk))

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
            watched = job_uuid in self._reads
            seen = isinstance(observation, Seen)
            if not watched:
                moved = False  # dropped while it was read: nothing to remember or hand over
            elif isinstance(observation, Seen):
                moved = self._feed.record(observation.job)
            else:
                moved = True  # not found, refused or unreachable: the dispatcher decides
            if moved:
                self._handovers.offer(job_uuid, observation, discovered=False)
            self._reads.finished(
                job_uuid, observation, moved=moved and seen, read_at=read_at, now=self._clock()
            )
            if watched and seen and self._accounted(job_uuid):
                self._reads.park(job_uuid)  # the feed tells its next change
