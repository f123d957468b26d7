"""The watches of one cluster, and the order that makes at-least-once hold.

The dispatcher owns every watch held on a cluster and what has been published about each job. The
scheduler hands it observations (``apply``) and gets an explicit ``Applied`` back; it never sees a
watch. For each observation the dispatcher:

1. publishes the event and every ``reply_to`` copy, each confirmed by the broker;
2. only then remembers the new progress (a failed publish is offered again later, same id);
3. for an end, acknowledges each watch; for a change of state, re-enqueues each watch with its
   new progress (confirmed) and only then acknowledges the old delivery.

Its housekeeping (``run``) ends watches whose deadline passed, checkpoints watches held for
``checkpoint_interval``, drops deliveries of dead channels, and forgets jobs nobody waits on.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import structlog
from structlog.contextvars import bound_contextvars

from poller import tracing, tracking
from poller.errors import BrokerError
from poller.events import job_event
from poller.metrics import Metrics
from poller.settling import Settler
from poller.tasks import Background
from poller.tracking import Observation, Progress, Step, Track
from poller.watch import Outbox, Record, Watch

log = structlog.get_logger(__name__)
T = TypeVar("T")
#: Changes that are not a job's end are published this many at a time: when thousands of jobs
#: change together (a burst of first sightings, each an event and a checkpoint), the work queues
#: here rather than in the event loop, and the end of a job is never stuck behind it.
_CHANGES_AT_ONCE: Final = 64
#: Ends are published this many at a time too, on their own: enough to keep the broker's
#: confirms flowing, few enough that a burst of thousands of ends (requests for jobs that ended
#: long ago) waits here, a hand-over each, rather than as thousands of publishes under way, each
#: a chain of coroutines, futures and a timer in the AMQP client that the collector walks again
#: and again.
_ENDS_AT_ONCE: Final = 512
#: A job whose watches all left (to be re-enqueued with a checkpoint) is kept this long, so that
#: the copies coming back find its progress and its latest event.
_EMPTY_GRACE_S: Final = 30.0
#: How long the ids of ended watches are remembered, to settle their late copies.
_ENDED_MEMORY_S: Final = 600.0
#: Housekeeping visits every watch, so it runs at most every _SWEEP_S_PER_JOB per job, between
#: these bounds: deadlines kept to within 50 ms with few jobs and 1 s with 10,000.
_SWEEP_MIN_S: Final = 0.05
_SWEEP_MAX_S: Final = 1.0
_SWEEP_S_PER_JOB: Final = 2e-4


class Applied(enum.Enum):
    """What became of one observation handed to the dispatcher."""

    #: Done: its event (if any) is published; the scheduler may move on.
    TAKEN = "taken"
    #: The job's watches all ended (an end state, not found, refused): stop reading it.
    ENDED = "ended"
    #: Not done (the broker refused, or the watches are away being re-enqueued): offer it again.
    RETRY = "retry"
    #: No watch waits on this job and it is not discovered: nothing to do.
    IGNORED = "ignored"


class Admission(enum.Enum):
    """What became of a watch handed to the dispatcher."""

    #: The first watch of a job: the job needs a first observation.
    NEW = "new"
    #: The job is known already; the watch was given its latest event on ``reply_to``.
    JOINED = "joined"
    #: A late copy of a watch that already ended here: acknowledged, nothing more.
    SETTLED = "settled"


class Dispatcher:
    """Carries out observations for the jobs of one cluster, and owns their watches."""

    def __init__(
        self,
        cluster: str,
        outbox: Outbox,
        *,
        publish_progress: bool = False,
        checkpoint_interval_s: float = 600.0,
        reading: Callable[[str], bool] = lambda _uuid: False,
        on_idle: Callable[[str], None] = lambda _uuid: None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self._settler = Settler(cluster, outbox, on_idle=on_idle, clock=clock)
        self._publish_progress = publish_progress
        self._checkpoint_interval_s = checkpoint_interval_s
        #: Whether a read of the job is under way (the scheduler knows): a deadline waits for it.
        self._reading = reading
        #: Called when nobody here waits on a job any more, for now or for good: stop reading it.
        self._on_idle = on_idle
        self._metrics = metrics
        self._clock = clock
        self._records: dict[str, Record] = {}
        self._changes = asyncio.Semaphore(_CHANGES_AT_ONCE)
        self._ends = asyncio.Semaphore(_ENDS_AT_ONCE)
        self._tasks = Background("dispatcher", cluster)

    def holds(self, job_uuid: str) -> bool:
        return job_uuid in self._records

    # -- watches in ------------------------------------------------------------------------------

    def add(self, watch: Watch, progress: Progress, *, resumed: bool = False) -> Admission:
        """Attach a watch to its job (a request, or a checkpoint copy coming back)."""
        if resumed and watch.watch_id in self._settler.ended:
            self._tasks.spawn(self._settler.settle_late_copy(watch))
            return Admission.SETTLED
        uuid = watch.request.uuid
        record = self._records.get(uuid)
        admission = Admission.JOINED
        if record is None:
            record = self._records[uuid] = Record(uuid, Track(progress))
            admission = Admission.NEW
        elif progress.changes > record.track.progress.changes and not record.lock.locked():
            # This copy carries more of the job's history than the record (its older twin came
            # first, or another worker polled the job): go on from it, so that later changes get
            # the n, hence the ce-id, that its earlier events were published with.
            record.track = Track(progress)
        if record.trace is None:
            record.trace = watch.trace
        previous = record.watches.get(watch.watch_id)
        record.watches[watch.watch_id] = watch
        record.empty_since = None
        if previous is not None and previous.delivery is not watch.delivery and not previous.busy:
            # A second copy of the same watch (a checkpoint whose old delivery could not be
            # acknowledged): settle the older one, or it would be held until the consumer timeout.
            self._tasks.spawn(self._settler.ack(record, previous))
        if admission is Admission.JOINED:
            self._tasks.spawn(self._settler.replay_latest(record, watch))
        return admission

    # -- observations in ------------------------------------------------------------------------

    async def apply(
        self, job_uuid: str, observation: Observation, *, discovered: bool = False
    ) -> Applied:
        """Carry out what ``observation`` means for the job's watches (and subscribers)."""
        record = self._records.get(job_uuid)
        if record is None:
            if not discovered:
                return Applied.IGNORED
            record = self._records[job_uuid] = Record(job_uuid, Track(), discovered=True)
            if self._metrics is not None:
                self._metrics.jobs_discovered.labels(self.cluster).inc()
        if tracking.ends_watches(observation):
            async with self._ends:
                return await self._apply(record, observation)
        async with self._changes:
            return await self._apply(record, observation)

    def note_reachable(self, error: dict[str, Any] | None) -> None:
        """The cluster's feed answered (None), or failed with ``error``: deadlines now say so."""
        self._settler.unreachable = error

    def forget_discovered(self) -> None:
        """Discovery moved to another worker: forget the jobs nobody here waits on."""
        for record in [r for r in self._records.values() if r.discovered and not r.watches]:
            self._forget(record)

    async def _apply(self, record: Record, observation: Observation) -> Applied:
        with bound_contextvars(cluster=self.cluster, job=record.uuid):
            async with record.lock:
                if self._records.get(record.uuid) is not record:
                    return Applied.IGNORED  # forgotten meanwhile
                for watch in [w for w in record.watches.values() if w.delivery.stale]:
                    self._settler.detach(record, watch)
                if not record.watches and not record.discovered:
                    return Applied.RETRY  # all re-enqueued: their copies come back soon
                step = tracking.step(
                    record.track, observation, publish_progress=self._publish_progress
                )
                return await self._carry_out(record, step)

    async def _carry_out(self, record: Record, step: Step) -> Applied:
        watches = list(record.watches.values())
        envelope = None
        if step.change is not None:
            # An end's id has no n, so only other changes wait for lagging copies to catch up.
            if not step.final and not await self._catch_up(record, watches):
                return Applied.RETRY
            envelope = job_event(self.cluster, record.uuid, step.change, self._settler.now())
            attributes = {"cloudevents.event_id": envelope.message_id, "ontap.job": record.uuid}
            try:
                with tracing.publishing(envelope.routing_key, record.trace, attributes) as trace:
                    envelope = envelope.with_trace(trace)
                    await self._settler.publish(envelope, watches)
            except BrokerError as exc:
                # Progress is not advanced: the same change is offered again, with the same id.
                log.warning("event.publish_failed", error=str(exc))
                return Applied.RETRY
            record.latest = envelope
        record.track = step.track
        if envelope is not None:
            sent = (step.track.progress.state, step.track.progress.changes)
            for w in watches:
                w.seen = sent
        if step.final:
            await self._end_all(record, step)
            return Applied.ENDED
        if step.outcome is not None:
            body = {"error": step.error or {}}
            await asyncio.gather(
                *(self._settler.end_watch(record, w, step.outcome, body) for w in watches)
            )
            if record.watches:
                return Applied.RETRY  # a watch's event was refused: it ends at the next offer
            self._forget(record)
            return Applied.ENDED
        if step.change is not None and step.change.kind == "state":
            held = [w for w in watches if record.watches.get(w.watch_id) is w]
            await _each(self._settler.checkpoint(record, w) for w in held)
        return Applied.TAKEN

    async def _end_all(self, record: Record, step: Step) -> None:
        # Watches may join while the final event is being confirmed: loop until none is left.
        while pending := list(record.watches.values()):
            self._settler.ended.update(dict.fromkeys((w.watch_id for w in pending), self._clock()))
            await _each(self._settler.replay_latest(record, w) for w in pending)
            await _each(self._settler.ack(record, w) for w in pending)
            log.info("watch.ended", outcome=step.track.progress.state, watches=len(pending))
        self._forget(record)

    async def _catch_up(self, record: Record, watches: list[Watch]) -> bool:
        """Checkpoint the watches whose copy lacks changes already published; False if one fails.

        A worker resuming a copy names the job's next change with the copy's ``n``. Were a change
        published while a held copy lacked an earlier one (it joined late, or its checkpoint
        failed), a crash could make the same change appear again under another ``n``, hence
        another ``ce-id``. So no such change is published before every copy knows all earlier ones.
        """
        lagging = [w for w in watches if w.saved_changes < record.track.progress.changes]
        if not lagging:
            return True
        await asyncio.gather(*(self._settler.checkpoint(record, w) for w in lagging))
        # A successful checkpoint detaches the watch (its copy comes back); a failed one keeps it.
        return not any(record.watches.get(w.watch_id) is w for w in lagging)

    # -- housekeeping ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Sweep until cancelled; the expiries and checkpoints under way are cancelled with it."""
        structlog.contextvars.bind_contextvars(cluster=self.cluster)
        try:
            while True:
                self.sweep(self._clock())
                pause = len(self._records) * _SWEEP_S_PER_JOB
                await asyncio.sleep(min(_SWEEP_MAX_S, max(_SWEEP_MIN_S, pause)))
        finally:
            await self._tasks.cancel()

    def sweep(self, now: float) -> None:
        """Forget dead deliveries; expire and checkpoint the watches that are due; forget jobs."""
        self._settler.forget_ended(before=now - _ENDED_MEMORY_S)
        watches = 0
        for record in list(self._records.values()):
            for watch in list(record.watches.values()):
                if watch.delivery.stale:
                    # The broker has given it back to the queue; it must not be published or acked.
                    self._settler.detach(record, watch)
                elif watch.busy or now < watch.not_before:
                    pass
                elif watch.deadline_at <= now and not self._reading(record.uuid):
                    # Past the deadline with a read under way, the read's end comes first: it
                    # tells "ONTAP still answered" (timeout) from "the attempts all failed" (error).
                    self._tasks.spawn(self._settler.serially(record, watch, self._settler.expire))
                elif now - watch.held_since >= self._checkpoint_interval_s:
                    self._tasks.spawn(
                        self._settler.serially(record, watch, self._settler.checkpoint)
                    )
            watches += len(record.watches)
            if record.watches or record.discovered:
                record.empty_since = None
            elif record.empty_since is None:
                record.empty_since = now
            elif now - record.empty_since >= _EMPTY_GRACE_S and not record.lock.locked():
                self._forget(record)
        if self._metrics is not None:
            self._metrics.watches_active.labels(self.cluster).set(watches)
            self._metrics.jobs_tracked.labels(self.cluster).set(len(self._records))

    async def wait_idle(self) -> None:
        """Wait for the expiries, checkpoints and acknowledgements under way now."""
        await self._tasks.wait()

    def _forget(self, record: Record) -> None:
        if self._records.get(record.uuid) is record:
            del self._records[record.uuid]
            self._on_idle(record.uuid)


async def _each(coros: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather``, without a task for a lone awaitable (one watch per job, the usual case)."""
    pending = list(coros)
    if len(pending) == 1:
        return [await pending[0]]
    return await asyncio.gather(*pending)
