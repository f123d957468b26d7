"""Pure: when each watched job is read by uuid next.

Reads by uuid serve what the change feed does not account for (new jobs, jobs gone from the active
set), and every watched job of a cluster without the feed. Each job keeps its own backoff, from
``poll_interval_min`` to ``poll_interval_max``; jobs due at about the same time are read together,
in chunks of ``batch_size`` (one collection call each). Due times sit in a heap, so a tick costs
what is due, not what is watched.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from poller.tracking import Observation, Policy, Seen, next_read

#: The due time of a job the change feed accounts for: it is not read by uuid.
NEVER: Final = math.inf


#: A job nobody watches keeps its timing this long: its watches may be on their way back (a
#: checkpoint's copy), and should find it read on the same schedule, with the same jobs.
AWAY_S: Final = 60.0


@dataclass(slots=True)
class _Read:
    due_at: float = NEVER
    interval_s: float | None = None
    in_flight: bool = False
    #: When its last watch left (None while watched).
    left_at: float | None = None


class UuidReads:
    """The watched jobs of one cluster, and when each is read by uuid next."""

    def __init__(self, policy: Policy, *, batch_size: int, coalesce_s: float) -> None:
        self._policy = policy
        self.batch_size = batch_size
        self._coalesce_s = coalesce_s
        self._reads: dict[str, _Read] = {}
        #: Jobs no longer watched, kept for a while with their timing: not read meanwhile, and
        #: read on their old schedule again if a watch comes back.
        self._away: dict[str, _Read] = {}
        #: (due_at, tie-breaker, uuid); an item is current while its time is the job's due_at.
        self._due: list[tuple[float, int, str]] = []
        self._pushes = itertools.count()
        self._next_read_at = 0.0

    def __contains__(self, job_uuid: object) -> bool:
        return job_uuid in self._reads

    def __len__(self) -> int:
        return len(self._reads)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._reads))

    def add(self, job_uuid: str, now: float) -> bool:
        """Read the job (again): a watch of it arrived, or came back. True when it has no read
        planned (a new job, or one the feed accounted for): the caller decides when."""
        if job_uuid in self._reads:
            return False
        read = self._away.pop(job_uuid, None)
        if read is None:
            self._reads[job_uuid] = _Read()
            return True
        read.left_at = None
        self._reads[job_uuid] = read
        if read.due_at == NEVER or read.in_flight:
            return not read.in_flight
        self.schedule(job_uuid, max(read.due_at, now))  # on its old schedule; due now if missed
        return False

    def remove(self, job_uuid: str, now: float) -> None:
        """Nobody watches the job now: stop reading it, but keep its timing for a while."""
        read = self._reads.pop(job_uuid, None)
        if read is not None:
            read.left_at = now
            self._away[job_uuid] = read  # at the end: the dict stays in order of leaving

    def forget_away(self, now: float) -> list[str]:
        """Forget the jobs away longer than ``AWAY_S`` (oldest first); which ones."""
        gone: list[str] = []
        while self._away:
            job_uuid, read = next(iter(self._away.items()))
            if read.left_at is None or now - read.left_at <= AWAY_S:
                break
            del self._away[job_uuid]
            if read.in_flight:
                read.left_at = now  # its read ends soon; look again later
                self._away[job_uuid] = read
            else:
                gone.append(job_uuid)
        return gone

    def in_flight(self, job_uuid: str) -> bool:
        read = self._reads.get(job_uuid) or self._away.get(job_uuid)
        return read is not None and read.in_flight

    def schedule(self, job_uuid: str, at: float) -> None:
        """Read the job by uuid at ``at`` (unless it is being read: its end reschedules it)."""
        read = self._reads.get(job_uuid)
        if read is None or read.in_flight:
            return
        read.due_at = at
        heapq.heappush(self._due, (at, next(self._pushes), job_uuid))

    def park(self, job_uuid: str) -> None:
        """The feed accounts for the job: no read by uuid until it no longer does."""
        if (read := self._reads.get(job_uuid)) is not None:
            read.due_at = NEVER

    def parked(self) -> list[str]:
        return [u for u, read in self._reads.items() if read.due_at == NEVER and not read.in_flight]

    def next_due(self) -> float | None:
        """When the next read comes due; None when none is scheduled."""
        return max(self._due[0][0], self._next_read_at) if self._due else None

    def take_due(self, now: float, accounted: Callable[[str], bool]) -> list[str]:
        """The jobs due now or nearly due, to read together; those the feed accounts for parked.

        Jobs nearly due are taken with those due now, but not at every tick (ticks come with
        every answer): reads go out at most every half coalescing interval, so that they stay
        full instead of trickling a few jobs at a time.
        """
        if not self._due or self._due[0][0] > now or now < self._next_read_at:
            return []
        self._next_read_at = now + self._coalesce_s / 2
        horizon = now + self._coalesce_s
        due: dict[str, None] = {}  # ordered, and a job pushed twice is taken once
        while self._due and self._due[0][0] <= horizon:
            at, _, job_uuid = heapq.heappop(self._due)
            read = self._reads.get(job_uuid)
            if read is None or read.in_flight or at != read.due_at or job_uuid in due:
                continue  # away, being read, rescheduled since, or taken already
            if accounted(job_uuid):
                read.due_at = NEVER
                continue
            due[job_uuid] = None
        return list(due)

    def start(self, job_uuids: list[str]) -> Iterator[list[str]]:
        """Mark ``job_uuids`` as being read; the chunks to read them in."""
        for job_uuid in job_uuids:
            self._reads[job_uuid].in_flight = True
        for start in range(0, len(job_uuids), self.batch_size):
            yield job_uuids[start : start + self.batch_size]

    def finished(
        self, job_uuid: str, observation: Observation, *, moved: bool, read_at: float, now: float
    ) -> None:
        """A read ended: back off, or read again soon after a change."""
        read = self._reads.get(job_uuid) or self._away.get(job_uuid)
        if read is None:
            return
        read.in_flight = False
        read.interval_s, delay = next_read(
            read.interval_s, observation, moved=moved, policy=self._policy
        )
        # From when it was read: jobs read together stay together, so calls stay full. After a
        # failed read, from now: its retries may have outlasted the interval.
        since = read_at if isinstance(observation, Seen) else now
        read.due_at = since + delay
        if job_uuid in self._reads:
            self.schedule(job_uuid, read.due_at)

    def abandoned(self, job_uuids: list[str], now: float) -> None:
        """Reads that ended without an answer (cancelled): read them again at once."""
        for job_uuid in job_uuids:
            read = self._reads.get(job_uuid) or self._away.get(job_uuid)
            if read is not None and read.in_flight:
                read.in_flight = False
                read.due_at = now
                if job_uuid in self._reads:
                    self.schedule(job_uuid, now)
