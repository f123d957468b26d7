"""A cluster's change feed: its two queries, when each is due, and what their answers say.

- every ``poll_interval_min`` (a tick): ``end_time=>=T``, the jobs that ended since T, on the
  cluster's own clock (``feed.EndsWindow``);
- ``state=queued|running|paused``, the active set, for the changes between start and end: after
  ``poll_interval_min``, the gap growing to ``poll_interval_max`` while no watched job changes (a
  change, or a new watch, resets it), as one job's reads would. A round returns every active job,
  so a large active set is re-read less often (``REFRESH_S_PER_JOB`` per active job), and never less
  often than every ``poll_interval_max``.

``ChangeFeed`` makes the calls, keeps their timing and the cluster's view (``feed.JobView``), and
returns what is news; what news means for watches is the scheduler's business. Failures are raised
as the ``OntapError`` family, for the scheduler to deal with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from poller.feed import ACTIVE_STATES, PURGE_WINDOW_S, ClusterClock, EndsWindow, JobView
from poller.models import Job
from poller.ontap import Answer
from poller.tracking import Policy, next_interval

#: The gap between active rounds is at least this per active job: a round costs ONTAP one record
#: per active job, so thousands of active jobs are re-read every few seconds, not every tick.
REFRESH_S_PER_JOB: Final = 0.002


class Query(Protocol):
    """The one call the feed makes (``ontap.OntapClient.query``)."""

    async def query(self, filters: Mapping[str, str], *, endpoint: str) -> Answer: ...


@dataclass
class Round:
    """What one feed query told: the records that are news (a state or message not handed over
    yet), and, for the active set, the jobs it no longer lists although they were running: ended
    since (the next ends window says so), moved to a state outside the set, or deleted."""

    news: list[Job] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)


class ChangeFeed:
    """The feed of one cluster: the view of its jobs, its clock, and when each query is due."""

    def __init__(
        self,
        ontap: Query,
        policy: Policy,
        *,
        watched: Callable[[str], bool],
        purge_window_s: float = PURGE_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.view = JobView(purge_window_s)
        #: Whether a job is watched: a change of one resets the backoff of active rounds.
        self._watched = watched
        self.cluster_clock = ClusterClock()
        self._ontap = ontap
        self._policy = policy
        self._purge_window_s = purge_window_s
        self._clock = clock
        self._window = EndsWindow()
        self._next_ends_at = self._next_active_at = self.last_active_at = 0.0
        self._ends_running = self._active_running = False
        #: The backoff of active rounds, whether a watched job changed since the last one, and
        #: how many jobs the last one returned.
        self._interval_s: float | None = None
        self._moved = False
        self._active_size = 0
        self._idle_since: float | None = None

    @property
    def busy(self) -> bool:
        """A query is under way."""
        return self._ends_running or self._active_running

    def cluster_now(self) -> float | None:
        return self.cluster_clock.now(self._clock())

    def due(self, now: float) -> list[str]:
        """The queries to start now (``active``, ``ends``); they count as under way from here."""
        self._idle_since = None
        due = []
        if not self._active_running and now >= self._next_active_at:
            self._active_running = True
            due.append("active")
        if not self._ends_running and now >= self._next_ends_at and self._window.since is not None:
            self._ends_running = True
            due.append("ends")
        return due

    def next_at(self) -> float:
        times = [] if self._active_running else [self._next_active_at]
        if not self._ends_running and self._window.since is not None:
            times.append(self._next_ends_at)
        return min(times, default=self._clock() + self._policy.poll_interval_max_s)

    def record(self, job: Job) -> bool:
        """Remember a record of ``job`` (from any answer); True when it is news."""
        self.cluster_clock.learn_zone(job)
        if not self.view.record(job, self.cluster_now()):
            return False
        self._moved |= self._watched(job.uuid)
        return True

    def expect_changes(self, now: float) -> None:
        """A new job was watched: it changes soon after it starts, so the next round comes early."""
        self._moved = True
        soon = max(now, self.last_active_at) + self._gap_s(None)
        self._next_active_at = min(self._next_active_at, soon)

    def read_now(self) -> None:
        """Both queries at once (a burst of new watches, or discovery taking over)."""
        self._next_ends_at = self._next_active_at = 0.0

    def look_back(self) -> None:
        """The next ends window reaches back over everything ONTAP still holds."""
        if (cluster_now := self.cluster_now()) is not None:
            self._window.open(cluster_now, self._purge_window_s)

    def rest(self, now: float) -> None:
        """Nobody needs the feed now: no query is made, and after a while its view goes."""
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since > 2 * self._policy.poll_interval_max_s and len(self.view):
            self.forget()

    def forget(self) -> None:
        """Nobody needs the feed any longer: its view and window go."""
        self.view.clear()
        self._window = EndsWindow()

    async def run(self, kind: str) -> Round:
        """Run a query that ``due`` returned; raises the ``OntapError`` family."""
        if kind == "active":
            return await self._active_round()
        return await self._ends_round()

    async def _active_round(self) -> Round:
        self.last_active_at = started = self._clock()
        round_ = self.view.begin_round()
        self._moved = False
        try:
            answer = await self._query({"state": "|".join(ACTIVE_STATES)}, endpoint="active")
        finally:
            self._active_running = False
            self._next_active_at = started + self._policy.poll_interval_max_s
        news = [job for job in answer.jobs if self.record(job)]
        self._active_size = len(answer.jobs)
        self._interval_s = next_interval(self._interval_s, moved=self._moved, policy=self._policy)
        self._next_active_at = started + self._gap_s(self._interval_s)
        return Round(news, unlisted=self.view.end_round(round_))

    async def _ends_round(self) -> Round:
        started = self._clock()
        since = self._window.since
        assert since is not None, "an ends round needs a window"
        try:
            filters = {"end_time": ">=" + self.cluster_clock.render(since)}
            answer = await self._query(filters, endpoint="ends")
        finally:
            self._ends_running = False
            self._next_ends_at = started + self._policy.poll_interval_min_s
        self._window.advance(answer.date, answer.jobs)
        news = [job for job in answer.jobs if self.record(job)]
        if (cluster_now := self.cluster_now()) is not None:
            self.view.forget_purged(cluster_now)
        return Round(news)

    async def _query(self, filters: dict[str, str], *, endpoint: str) -> Answer:
        answer = await self._ontap.query(filters, endpoint=endpoint)
        local_now = self._clock()
        self.cluster_clock.observe(answer.date, local_now)
        self.cluster_clock.observe_times(answer.jobs, local_now)
        if self._window.since is None:
            # The feed starts: its first window reaches back over what ONTAP still holds.
            self.look_back()
        return answer

    def _gap_s(self, interval_s: float | None) -> float:
        """The gap before the next active round: the backoff, widened for a large active set."""
        backoff = interval_s or self._policy.poll_interval_min_s
        widened = max(backoff, self._active_size * REFRESH_S_PER_JOB)
        return min(widened, self._policy.poll_interval_max_s)
