"""Pure: a cluster's change feed, on the cluster's own clock.

ONTAP's collection endpoint filters on any field, so a fixed number of calls tells what changed on
a whole cluster, however many jobs it runs: ``end_time=>=T`` for the jobs that ended since T, every
tick, and ``state=queued|running|paused`` for the active set, less often. This module holds what
those answers mean, with no I/O and no clock of its own:

- ``ClusterClock``: the cluster's time as its ``Date`` header shows it (or, without one, as the
  latest time it returned), and the zone it writes its times in. Clusters' clocks drift and clusters render times in their own zone, so a window
  written on the worker's clock can miss every end.
- ``EndsWindow``: where the next ``end_time=>=T`` query starts; it overlaps the previous one by a
  margin, and ``JobView`` drops what the overlap repeats.
- ``JobView``: the latest record of each job the cluster showed, which records are news (a state or
  message not yet handed over), which jobs the feed accounts for (so that they need no read by
  uuid), and when an ended job may be forgotten because ONTAP has purged it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final

from poller.models import FINAL_STATES, Job

#: The active set: every job that has not ended, in the states ONTAP documents.
ACTIVE_STATES: Final = ("queued", "running", "paused")
#: ``end_time`` and the ``Date`` header each have a resolution of one second. A job that ended after
#: the last answer has an ``end_time`` no earlier than that answer's ``Date`` when both truncate, so
#: a window starting at the ``Date`` would do; one second more covers a ``Date`` rounded instead, and
#: nodes of one cluster whose clocks differ by less than a second. Every second of margin costs each
#: end one more appearance in the windows (``JobView`` drops the repeats).
WINDOW_MARGIN_S: Final = 1.0
#: ONTAP deletes a finished job about 300 s after it ends.
PURGE_WINDOW_S: Final = 300.0

Key = tuple[str, str | None]


def ontap_time(value: object) -> datetime | None:
    """One of ONTAP's times (``2026-11-30T02:21:44-05:00``); None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass
class ClusterClock:
    """The cluster's clock, as learned from its answers; never the worker's own."""

    #: Cluster time minus local time: from the last ``Date`` header, or, while none came, from the
    #: latest time the cluster returned; None until either did.
    offset_s: float | None = None
    #: The zone the cluster writes its times in, learned from the times it returns.
    zone: tzinfo = UTC
    #: A ``Date`` header arrived: it alone sets the offset from then on.
    dated: bool = False

    def observe(self, date: float | None, local_now: float) -> None:
        """Take the ``Date`` of an answer received at ``local_now`` (on the worker's clock)."""
        if date is not None:
            self.offset_s = date - local_now
            self.dated = True

    def observe_times(self, jobs: list[Job], local_now: float) -> None:
        """Without any ``Date`` (a proxy strips it), the times an answer shows bound the cluster's.

        A job's ``start_time`` or ``end_time`` is no later than the cluster's now when it answered,
        so the latest of them is a now that errs early: windows written from it reach back further
        than needed, and the overlap is dropped as any other.
        """
        if self.dated:
            return
        times = [
            t.timestamp()
            for job in jobs
            for name in ("start_time", "end_time")
            if (t := ontap_time(job.raw.get(name))) is not None
        ]
        if times:
            latest = max(times) - local_now
            self.offset_s = latest if self.offset_s is None else max(self.offset_s, latest)

    def learn_zone(self, job: Job) -> None:
        """Write later windows in the zone of the times this job shows."""
        for name in ("end_time", "start_time"):
            if (when := ontap_time(job.raw.get(name))) is not None:
                self.zone = when.tzinfo or UTC
                return

    def now(self, local_now: float) -> float | None:
        """The cluster's time now, extrapolated from its last ``Date``; None before the first."""
        return None if self.offset_s is None else local_now + self.offset_s

    def render(self, instant: float) -> str:
        """``instant`` (cluster epoch seconds) as ONTAP writes times: ISO 8601, whole seconds."""
        return datetime.fromtimestamp(math.floor(instant), self.zone).isoformat()


@dataclass
class EndsWindow:
    """Where the next ``end_time=>=T`` query starts, on the cluster's clock."""

    since: float | None = None

    def open(self, cluster_now: float, lookback_s: float) -> None:
        """Start (or restart) the window ``lookback_s`` before the cluster's now."""
        self.since = cluster_now - lookback_s

    def advance(self, date: float | None, jobs: list[Job]) -> None:
        """After an answer: the next window starts a margin before this answer's ``Date``.

        Without a ``Date`` header, the latest end the answer shows is the best the cluster says
        of its time; the window then only moves when something ends.
        """
        if self.since is None:
            return
        if date is not None:
            self.since = max(self.since, date - WINDOW_MARGIN_S)
            return
        ends = [t.timestamp() for j in jobs if (t := ontap_time(j.raw.get("end_time")))]
        if ends:
            self.since = max(self.since, max(ends) - WINDOW_MARGIN_S)


@dataclass(slots=True)
class _Entry:
    job: Job
    #: The key of the last record handed over (an event published, or nothing to publish).
    handed: Key | None = None
    #: When the job ended, on the cluster's clock; None while it runs.
    ended_at: float | None = None
    #: The last active round (or read by uuid) that showed the job running.
    listed: int = 0


def key_of(job: Job) -> Key:
    """What makes a record news: its state and its message."""
    return job.state, job.message


@dataclass
class JobView:
    """The latest record of every job the cluster showed, and what of it was handed over."""

    purge_window_s: float = PURGE_WINDOW_S
    _entries: dict[str, _Entry] = field(default_factory=dict)
    #: Active rounds begun, and the last one completed.
    _round: int = 0
    _complete: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_uuid: str) -> bool:
        return job_uuid in self._entries

    def clear(self) -> None:
        """Forget everything: the feed stopped, or the cluster no longer serves it."""
        self._entries.clear()

    def get(self, job_uuid: str) -> Job | None:
        entry = self._entries.get(job_uuid)
        return None if entry is None else entry.job

    def record(self, job: Job, cluster_now: float | None) -> bool:
        """Remember ``job``; True when it is news: not what was last handed over."""
        entry = self._entries.get(job.uuid)
        if entry is None:
            entry = self._entries[job.uuid] = _Entry(job)
        else:
            entry.job = job
        if job.state in FINAL_STATES and entry.ended_at is None:
            ended = ontap_time(job.raw.get("end_time"))
            entry.ended_at = ended.timestamp() if ended is not None else cluster_now
        elif job.state not in FINAL_STATES:
            entry.listed = self._round
        return entry.handed != key_of(job)

    def handed_over(self, job: Job) -> bool:
        """``job`` was taken (published, or nothing to publish); True if a newer record waits."""
        entry = self._entries.get(job.uuid)
        if entry is None:
            return False
        entry.handed = key_of(job)
        return entry.handed != key_of(entry.job)

    def news(self, job_uuid: str) -> Job | None:
        """The latest record of the job, if it was not handed over yet."""
        entry = self._entries.get(job_uuid)
        if entry is None or entry.handed == key_of(entry.job):
            return None
        return entry.job

    def forget_handovers(self) -> list[Job]:
        """Make every record news again (discovery taking over announces them all)."""
        for entry in self._entries.values():
            entry.handed = None
        return [entry.job for entry in self._entries.values()]

    def accounts_for(self, job_uuid: str) -> bool:
        """The feed tells this job's changes: it ended, or the last active round listed it."""
        entry = self._entries.get(job_uuid)
        if entry is None:
            return False
        return entry.ended_at is not None or entry.listed >= max(self._complete, 1)

    def begin_round(self) -> int:
        """An active round starts; records it lists (or reads by uuid meanwhile) carry its number."""
        self._round += 1
        return self._round

    def end_round(self, round_: int) -> list[str]:
        """The round ended: the running jobs it did not list, which the feed no longer accounts for.

        Each has ended since (and the next ends window will say so), moved to a state outside
        the active set, or been deleted.
        """
        self._complete = max(self._complete, round_)
        return [
            u
            for u, entry in self._entries.items()
            if entry.ended_at is None and entry.listed < round_
        ]

    def forget(self, job_uuid: str) -> None:
        self._entries.pop(job_uuid, None)

    def forget_purged(self, cluster_now: float) -> int:
        """Drop ended jobs that ONTAP has purged by now; how many were dropped."""
        horizon = cluster_now - self.purge_window_s - WINDOW_MARGIN_S
        purged = [
            u
            for u, entry in self._entries.items()
            if entry.ended_at is not None and entry.ended_at < horizon
        ]
        for job_uuid in purged:
            del self._entries[job_uuid]
        return len(purged)
