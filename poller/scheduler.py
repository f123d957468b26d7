"""Per-cluster polling: which jobs are due, one collection call for many of them, a bound on calls.

One ``ClusterScheduler`` per configured cluster. Each job keeps its own next-poll time (backoff per
job); at each tick the scheduler gathers the jobs that are due, or nearly due, and reads them with
the collection endpoint in chunks that keep the URL short. A job missing from an answer is confirmed
with a single GET. At most ``max_concurrent_requests`` calls run at once.

Due times sit in a heap, so a tick costs what is due, not what is watched (10,000 watches on one
worker); housekeeping, which visits every watch, runs at most about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import replace
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from poller import tracking
from poller.errors import JobNotFound, OntapRefused, OntapUnavailable
from poller.metrics import Metrics
from poller.ontap import OntapClient
from poller.tracking import Gone, Observation, Policy, Progress, Refused, Seen, Track, Unreachable
from poller.watches import Dispatcher, JobEntry, Watch

log = structlog.get_logger(__name__)
#: Jobs due within this fraction of poll_interval_min are polled together with those due now.
_COALESCE_FRACTION = 0.25
_COALESCE_MAX_S = 0.5
_IDLE_WAKE_S = 5.0
#: Housekeeping (dead deliveries, deadlines, checkpoint timers, empty entries) visits every watch,
#: so it runs at most every _SWEEP_S_PER_ENTRY per tracked job, between these bounds: about 2% of
#: a core at any size, deadlines kept to within 50 ms with few jobs and 1 s with 10,000.
_SWEEP_MIN_S = 0.05
_SWEEP_MAX_S = 1.0
_SWEEP_S_PER_ENTRY = 2e-4
#: Changes that are not a job's end are published this many at a time (see _apply_in_turn).
_CHANGES_AT_ONCE = 64
#: A job whose watches all left (to be re-enqueued with a checkpoint) is kept this long, unpolled,
#: so that the copies coming back find its state, its backoff and its latest event.
_EMPTY_GRACE_S = 30.0
_ACTION_RETRY_S = 2.0
#: How long the ids of ended watches are remembered, to settle their late copies.
_ENDED_MEMORY_S = 600.0


class ClusterScheduler:
    """Polls every job watched on one cluster and hands each observation to the dispatcher."""

    def __init__(
        self,
        client: OntapClient,
        dispatcher: Dispatcher,
        policy: Policy,
        *,
        batch: bool,
        batch_size: int,
        max_concurrent_requests: int,
        checkpoint_interval_s: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = client.cluster
        self.entries: dict[str, JobEntry] = {}
        self._client = client
        self.dispatcher = dispatcher
        self._policy = policy
        self._batch = batch
        self._batch_size = batch_size
        self._calls = asyncio.Semaphore(max_concurrent_requests)
        self._checkpoint_interval_s = checkpoint_interval_s
        self._metrics = metrics
        self._clock = clock
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._coalesce_s = min(policy.poll_interval_min_s * _COALESCE_FRACTION, _COALESCE_MAX_S)
        #: (next_poll_at, tie-breaker, entry), one or more per entry; an item is current while its
        #: time is the entry's next_poll_at, so rescheduling is a push and old items are skipped.
        self._due: list[tuple[float, int, JobEntry]] = []
        self._pushes = itertools.count()
        self._next_sweep_at = 0.0
        self._next_read_at = 0.0
        self._changes = asyncio.Semaphore(_CHANGES_AT_ONCE)

    # -- watches in ------------------------------------------------------------------------------

    def add(self, watch: Watch, progress: Progress) -> tuple[JobEntry, bool]:
        """Attach a watch to its job; True when the job was already being polled."""
        uuid = watch.request.uuid
        entry = self.entries.get(uuid)
        joined = entry is not None
        if entry is None:
            # Not polled at once: requests tend to come in bursts, and a short wait lets one
            # collection call read the whole burst.
            entry = JobEntry(uuid, Track(progress=progress), self._clock() + self._coalesce_s)
            self.entries[uuid] = entry
            self._schedule(entry)
        elif progress.changes > entry.track.progress.changes and not entry.lock.locked():
            # This copy carries more of the job's history than the entry (its older twin came
            # first, or another worker polled the job): go on from it, so that later changes get
            # the n, hence the ce-id, that its earlier events were published with.
            entry.track = replace(entry.track, progress=progress)
        previous = entry.watches.get(watch.watch_id)
        entry.watches[watch.watch_id] = watch
        if joined and not entry.in_flight:
            # It may have been due while all its watches were away (being re-enqueued), and
            # skipped then; a second item for the same time is harmless.
            self._schedule(entry)
        entry.empty_since = None
        if previous is not None and previous.delivery is not watch.delivery and not previous.busy:
            # A second copy of the same watch (a checkpoint whose old delivery could not be
            # acknowledged): settle the older one, or it would be held until the consumer timeout.
            self._spawn(self.dispatcher.release(entry, previous))
        self._wake.set()
        return entry, joined

    def settle_if_ended(self, watch: Watch) -> bool:
        """True when ``watch`` already ended here: its late copy is then settled, not polled."""
        if not self.dispatcher.has_ended(watch.watch_id):
            return False
        self._spawn(self.dispatcher.settle_late_copy(watch))
        return True

    def wake(self) -> None:
        self._wake.set()

    async def wait_idle(self) -> None:
        """Wait for the polls, expiries and checkpoints under way now to finish."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until cancelled; in-flight polls are cancelled with it."""
        # This task's context: every poll it spawns logs with the cluster bound.
        structlog.contextvars.bind_contextvars(cluster=self.cluster)
        try:
            while True:
                now = self._clock()
                if now >= self._next_sweep_at:
                    self._housekeeping(now)
                    self._next_sweep_at = now + min(
                        _SWEEP_MAX_S, max(_SWEEP_MIN_S, len(self.entries) * _SWEEP_S_PER_ENTRY)
                    )
                for chunk in self._due_chunks(now):
                    self._spawn(self._poll(chunk))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._next_wakeup(now) - self._clock())):
                        await self._wake.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _schedule(self, entry: JobEntry) -> None:
        heapq.heappush(self._due, (entry.next_poll_at, next(self._pushes), entry))

    def _due_chunks(self, now: float) -> Iterator[list[JobEntry]]:
        if not self._due or self._due[0][0] > now or now < self._next_read_at:
            # Nothing is due yet, or reads went out a moment ago. Taking the jobs that are
            # merely nearly due at every tick (and ticks come with every answer), or those
            # that come due one by one, would read them a few at a time.
            return
        self._next_read_at = now + self._coalesce_s / 2
        horizon = now + self._coalesce_s
        due: list[JobEntry] = []
        while self._due and self._due[0][0] <= horizon:
            at, _, entry = heapq.heappop(self._due)
            if (
                at != entry.next_poll_at
                or entry.in_flight
                or self.entries.get(entry.uuid) is not entry
            ):
                continue  # rescheduled since, being polled (its end reschedules it), or forgotten
            if not entry.watches:
                continue  # all re-enqueued: scheduled again when a copy comes back
            entry.in_flight = True
            due.append(entry)
        size = self._batch_size if self._batch else 1
        for start in range(0, len(due), size):
            yield due[start : start + size]

    def _next_wakeup(self, now: float) -> float:
        # Deadlines and checkpoint timers are housekeeping's: they wait for the next sweep.
        wakeup = min(now + _IDLE_WAKE_S, self._next_sweep_at)
        return min(wakeup, max(self._due[0][0], self._next_read_at)) if self._due else wakeup

    def _housekeeping(self, now: float) -> None:
        """Forget deliveries of dead channels; expire and checkpoint watches that are due."""
        watches = 0
        self.dispatcher.forget_ended(before=now - _ENDED_MEMORY_S)
        for entry in list(self.entries.values()):
            for watch in list(entry.watches.values()):
                if watch.delivery.stale:
                    # The broker has given it back to the queue; it must not be polled or acked.
                    del entry.watches[watch.watch_id]
                elif watch.busy or now < watch.not_before:
                    pass
                elif watch.deadline_at <= now and not entry.in_flight:
                    # Past the deadline with a poll under way, the poll's end comes first: it tells
                    # "ONTAP still answered" (timeout) from "the last attempts all failed" (error).
                    self._spawn(self._under_lock(entry, watch, self.dispatcher.expire))
                elif now - watch.held_since >= self._checkpoint_interval_s:
                    self._spawn(self._under_lock(entry, watch, self.dispatcher.checkpoint))
            if entry.watches:
                entry.empty_since = None
            elif entry.empty_since is None:
                entry.empty_since = now
            elif now - entry.empty_since >= _EMPTY_GRACE_S and not entry.in_flight:
                self._forget(entry)
            watches += len(entry.watches)
        if self._metrics is not None:
            self._metrics.watches_active.labels(self.cluster).set(watches)
            self._metrics.jobs_tracked.labels(self.cluster).set(len(self.entries))

    async def _under_lock(
        self,
        entry: JobEntry,
        watch: Watch,
        action: Callable[[JobEntry, Watch], Coroutine[Any, Any, Any]],
    ) -> None:
        watch.busy = True
        try:
            with bound_contextvars(cluster=self.cluster, job=entry.uuid):
                async with entry.lock:
                    if entry.watches.get(watch.watch_id) is watch:
                        await action(entry, watch)
            if entry.watches.get(watch.watch_id) is watch:
                # Still held: the broker did not take the event or the copy. Try again a little
                # later rather than at every tick.
                watch.not_before = self._clock() + _ACTION_RETRY_S
        finally:
            watch.busy = False
            self._wake.set()

    # -- polling ---------------------------------------------------------------------------------

    async def _poll(self, chunk: list[JobEntry]) -> None:
        polled_at = self._clock()
        try:
            observations = await self._observe([e.uuid for e in chunk])
        except BaseException:
            for entry in chunk:
                self._release(entry)
            raise
        for entry in chunk:
            observation = observations[entry.uuid]
            # Most reads change nothing: those are settled here. Each other one gets a task of
            # its own, so that a slow publish holds back its own job and no other.
            if self._settle_quiet(entry, observation, polled_at):
                self._release(entry)
            else:
                self._spawn(self._apply_in_turn(entry, observation, polled_at))

    def _release(self, entry: JobEntry) -> None:
        entry.in_flight = False
        if self.entries.get(entry.uuid) is entry:
            self._schedule(entry)
        self._wake.set()

    async def _apply_in_turn(
        self, entry: JobEntry, observation: Observation, polled_at: float
    ) -> None:
        """Final outcomes at once; other changes a bounded number at a time.

        When thousands of jobs change together (a burst of new watches: each first sight is an
        event and a checkpoint), the work queues here rather than in the event loop, so that the
        end of a job is published without waiting behind all of it.
        """
        try:
            if _ends_watches(observation):
                await self._apply(entry, observation, polled_at)
            else:
                async with self._changes:
                    await self._apply(entry, observation, polled_at)
        finally:
            self._release(entry)

    async def _observe(self, uuids: Sequence[str]) -> dict[str, Observation]:
        if len(uuids) == 1 or not self._batch:
            return {u: await self._observe_one(u) for u in uuids}
        try:
            async with self._calls:
                jobs = await self._client.get_jobs(uuids)
        except OntapRefused as exc:
            log.warning("ontap.call_failed", outcome="refused", jobs=len(uuids), error=str(exc))
            return dict.fromkeys(uuids, Refused(exc.error))
        except OntapUnavailable as exc:
            log.warning("ontap.call_failed", outcome="unreachable", jobs=len(uuids), error=str(exc))
            return dict.fromkeys(uuids, Unreachable(exc.error, exc.retry_after_s))
        seen: dict[str, Observation] = {u: Seen(jobs[u]) for u in uuids if u in jobs}
        missing = [u for u in uuids if u not in jobs]
        # Absent from the answer: gone, or a lagging replica. One GET each tells which.
        confirmed = await asyncio.gather(*(self._observe_one(u) for u in missing))
        seen.update(zip(missing, confirmed, strict=True))
        return seen

    async def _observe_one(self, uuid: str) -> Observation:
        with bound_contextvars(job=uuid):
            try:
                async with self._calls:
                    return Seen(await self._client.get_job(uuid))
            except JobNotFound as exc:
                return Gone(exc.error)
            except OntapRefused as exc:
                log.warning("ontap.call_failed", outcome="refused", error=str(exc))
                return Refused(exc.error)
            except OntapUnavailable as exc:
                log.warning("ontap.call_failed", outcome="unreachable", error=str(exc))
                return Unreachable(exc.error, exc.retry_after_s)

    async def _apply(self, entry: JobEntry, observation: Observation, polled_at: float) -> None:
        with bound_contextvars(cluster=self.cluster, job=entry.uuid):
            async with entry.lock:
                if self.entries.get(entry.uuid) is not entry:
                    return
                for watch in [w for w in entry.watches.values() if w.delivery.stale]:
                    del entry.watches[watch.watch_id]
                if not entry.watches:
                    return  # all re-enqueued or gone meanwhile; housekeeping decides its fate
                step = tracking.step(entry.track, observation, self._policy)
                if await self.dispatcher.apply(entry, step):
                    self._forget(entry)
                else:
                    self._set_next_poll(entry, observation, step.next_poll_in_s, polled_at)

    def _settle_quiet(self, entry: JobEntry, observation: Observation, polled_at: float) -> bool:
        """Apply at once an observation that publishes nothing; False when ``_apply`` must.

        Without an await in between, nothing can interleave: no task (and no lock) is needed.
        """
        if entry.lock.locked() or self.entries.get(entry.uuid) is not entry or not entry.watches:
            return False
        if any(w.delivery.stale for w in entry.watches.values()):
            return False
        step = tracking.step(entry.track, observation, self._policy)
        if step.change is not None or step.final or step.outcome is not None:
            return False
        entry.track = step.track  # all that Dispatcher.apply does with a step like this one
        self._set_next_poll(entry, observation, step.next_poll_in_s, polled_at)
        return True

    def _set_next_poll(
        self, entry: JobEntry, observation: Observation, interval_s: float, polled_at: float
    ) -> None:
        # From when it was read: jobs read together stay together, so collection calls stay
        # full, and a change waits at most the interval to be seen. After failed calls, from
        # now: their retries may have taken longer than the interval.
        since = polled_at if isinstance(observation, Seen) else self._clock()
        entry.next_poll_at = since + interval_s

    def _forget(self, entry: JobEntry) -> None:
        if self.entries.get(entry.uuid) is entry:
            del self.entries[entry.uuid]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("scheduler.task_failed", cluster=self.cluster, error=repr(exc), exc_info=exc)


def _ends_watches(observation: Observation) -> bool:
    """The job reached an end state, or is gone, or ONTAP refused: its watches end now."""
    if isinstance(observation, Seen):
        return tracking.is_final(observation.job.state)
    return isinstance(observation, Gone | Refused)
