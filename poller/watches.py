"""What happens to the watches of one job when something is decided about it.

A ``JobEntry`` is one job being polled, with every watch that waits on it. ``Dispatcher`` carries
out a ``tracking.Step`` on an entry in the order that makes at-least-once hold:

1. publish the event and every ``reply_to`` copy, each confirmed by the broker;
2. only then remember the new progress (a failed publish is retried at the next poll, same id);
3. for a final step, acknowledge each watch; for a change of state, re-enqueue each watch with its
   new progress (confirmed) and only then acknowledge the old delivery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import structlog

from poller import checkpoint
from poller.checkpoint import Checkpoint
from poller.errors import BrokerError
from poller.events import Envelope, job_event, watch_event
from poller.models import WatchRequest
from poller.tracking import Outcome, Step, Track, expire

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Settle(Protocol):
    """The settling side of a delivery, as the broker adapter provides it."""

    @property
    def stale(self) -> bool: ...

    @property
    def reply_to(self) -> str | None: ...

    @property
    def correlation_id(self) -> str | None: ...

    async def ack(self) -> None: ...


class Outbox(Protocol):
    """The broker operations the dispatcher needs (``broker.Broker`` provides them)."""

    async def publish_event(self, envelope: Envelope) -> None: ...

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None: ...

    async def requeue_watch(self, watch: Watch, value: str) -> None: ...


@dataclass(eq=False, slots=True)
class Watch:
    """One request waiting on a job, held as an unacknowledged delivery."""

    watch_id: str
    request: WatchRequest
    delivery: Settle
    deadline_at: float
    #: When this delivery arrived: it must be checkpointed before the consumer timeout.
    held_since: float
    #: What this watch's subscriber has been sent already, as (state, n).
    seen: tuple[str | None, int] = (None, 0)
    #: The ``n`` in this delivery's own checkpoint: how many changes a worker resuming it knows.
    saved_changes: int = 0
    #: Identifies the watch in its ``watch.*`` event id: correlation_id, else message_id.
    key: str = ""
    #: An expiry or checkpoint of this watch is under way.
    busy: bool = False
    #: A failed expiry or checkpoint is not retried before this time.
    not_before: float = 0.0


@dataclass(eq=False, slots=True)
class JobEntry:
    uuid: str
    track: Track
    next_poll_at: float
    watches: dict[str, Watch] = field(default_factory=dict)
    latest: Envelope | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_flight: bool = False
    #: Since when no watch is attached (None while some are).
    empty_since: float | None = None


class Dispatcher:
    """Carries out decisions for the jobs of one cluster."""

    def __init__(
        self,
        cluster: str,
        outbox: Outbox,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self._outbox = outbox
        self._clock = clock
        #: Watches that ended here, by id, with when: a late copy of one is settled, not resumed.
        self._ended: dict[str, float] = {}

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def apply(self, entry: JobEntry, step: Step) -> bool:
        """Carry out ``step``; True when the entry is finished and can be forgotten."""
        watches = list(entry.watches.values())
        envelope = None
        if step.change is not None:
            # An end's id has no n, so only other changes wait for lagging copies to catch up.
            if not step.final and not await self._catch_up(entry, watches):
                return False
            envelope = job_event(self.cluster, entry.uuid, step.change, self.now())
            try:
                await self._publish(envelope, watches)
            except BrokerError as exc:
                # Progress is not advanced: the next poll sees the same change and publishes it again.
                log.warning(
                    "event.publish_failed", job=entry.uuid, cluster=self.cluster, error=str(exc)
                )
                return False
            entry.latest = envelope
        entry.track = step.track
        if envelope is not None:
            sent = (step.track.progress.state, step.track.progress.changes)
            for w in watches:
                w.seen = sent
        if step.final:
            # Watches may join while the final event is being confirmed: loop until none is left.
            while pending := list(entry.watches.values()):
                self._ended.update(dict.fromkeys((w.watch_id for w in pending), self._clock()))
                await _each(self.replay_latest(entry, w) for w in pending)
                await _each(self._ack(entry, w) for w in pending)
                log.info("watch.ended", outcome=step.track.progress.state, watches=len(pending))
            return True
        if step.outcome is not None:
            body = {"error": step.error or {}}
            ended = await asyncio.gather(
                *(self.end_watch(entry, w, step.outcome, body) for w in watches)
            )
            return all(ended) and not entry.watches
        if step.change is not None and step.change.kind == "state":
            held = [w for w in watches if entry.watches.get(w.watch_id) is w]
            await _each(self.checkpoint(entry, w) for w in held)
        return False

    async def _catch_up(self, entry: JobEntry, watches: list[Watch]) -> bool:
        """Checkpoint the watches whose copy lacks changes already published; False if one fails.

        A worker resuming a copy names the job's next change with the copy's ``n``. Were a change
        published while a held copy lacked an earlier one (it joined late, or its checkpoint
        failed), a crash could make the same change appear again under another ``n``, hence
        another ``ce-id``. So no change is published before every copy knows all earlier ones.
        """
        lagging = [w for w in watches if w.saved_changes < entry.track.progress.changes]
        if not lagging:
            return True
        await asyncio.gather(*(self.checkpoint(entry, w) for w in lagging))
        # A successful checkpoint detaches the watch (its copy comes back); a failed one keeps it.
        return not any(entry.watches.get(w.watch_id) is w for w in lagging)

    async def expire(self, entry: JobEntry, watch: Watch) -> None:
        """The watch's deadline passed: ``timeout``, or ``error`` when ONTAP was failing."""
        outcome, body = expire(entry.track)
        await self.end_watch(entry, watch, outcome, body)

    async def end_watch(
        self, entry: JobEntry, watch: Watch, outcome: Outcome, body: dict[str, Any]
    ) -> bool:
        """Publish ``watch.<cluster>.<outcome>`` for one watch, then acknowledge it."""
        envelope = watch_event(
            self.cluster,
            entry.uuid,
            outcome,
            body=body,
            previous_state=entry.track.progress.state,
            watch_key=watch.key,
            correlation_id=watch.delivery.correlation_id,
            seen_at=self.now(),
        )
        try:
            await self._publish(envelope, [watch])
        except BrokerError as exc:
            log.warning("event.publish_failed", job=entry.uuid, outcome=outcome, error=str(exc))
            return False
        self._ended[watch.watch_id] = self._clock()
        await self._ack(entry, watch)
        log.info("watch.ended", job=entry.uuid, cluster=self.cluster, outcome=outcome.value)
        return True

    async def checkpoint(self, entry: JobEntry, watch: Watch) -> None:
        """Re-enqueue the watch with its progress, confirmed, then acknowledge the old delivery."""
        if watch.delivery.stale:
            return
        value = checkpoint.encode(
            Checkpoint(watch.watch_id, watch.deadline_at, entry.track.progress)
        )
        try:
            await self._outbox.requeue_watch(watch, value)
        except BrokerError as exc:
            # The old delivery stays held; the next change or the checkpoint timer tries again.
            log.warning("watch.checkpoint_failed", job=entry.uuid, error=str(exc))
            return
        await self._ack(entry, watch)

    async def replay_latest(self, entry: JobEntry, watch: Watch) -> None:
        """A watch joining a job already polled gets the job's latest event on its reply_to."""
        latest, progress = entry.latest, entry.track.progress
        if latest is None or watch.delivery.reply_to is None:
            return
        if watch.seen == (progress.state, progress.changes):
            return  # its own checkpoint coming back: the subscriber has this event already
        try:
            await self._outbox.publish_reply(
                latest.for_watch(watch.delivery.correlation_id), watch.delivery.reply_to
            )
        except BrokerError as exc:
            log.warning("watch.replay_failed", job=entry.uuid, error=str(exc))

    def has_ended(self, watch_id: str) -> bool:
        return watch_id in self._ended

    def forget_ended(self, before: float) -> None:
        """Drop the record of watches that ended before ``before`` (oldest first, in order)."""
        while self._ended:
            watch_id, ended_at = next(iter(self._ended.items()))
            if ended_at >= before:
                return
            del self._ended[watch_id]

    async def settle_late_copy(self, watch: Watch) -> None:
        """A copy of a watch whose final event is already confirmed: acknowledge it, publish nothing.

        Such a copy exists when a checkpoint's old delivery was given back to the queue (its ack
        lost with a channel). Resuming it would publish the end again and, once ONTAP has purged
        the job, end the watch a second time with ``not_found``.
        """
        if watch.delivery.stale:
            return
        try:
            await watch.delivery.ack()
        except BrokerError as exc:
            log.warning("watch.ack_failed", job=watch.request.uuid, error=str(exc))

    async def release(self, entry: JobEntry, watch: Watch) -> None:
        """Acknowledge a delivery superseded by a newer copy of the same watch."""
        await self._ack(entry, watch)

    async def _publish(self, envelope: Envelope, watches: list[Watch]) -> None:
        await self._outbox.publish_event(envelope)
        log.debug("event.published", routing_key=envelope.routing_key, id=envelope.message_id)
        replies = [
            self._outbox.publish_reply(envelope.for_watch(w.delivery.correlation_id), reply_to)
            for w in watches
            if (reply_to := w.delivery.reply_to) is not None and not w.delivery.stale
        ]
        await asyncio.gather(*replies)

    async def _ack(self, entry: JobEntry, watch: Watch) -> None:
        # Detach first: the re-enqueued copy may already be back, registered under the same id.
        if entry.watches.get(watch.watch_id) is watch:
            del entry.watches[watch.watch_id]
        if watch.delivery.stale:
            return  # never acknowledge on a dead channel; the broker has redelivered it
        try:
            await watch.delivery.ack()
        except BrokerError as exc:
            log.warning("watch.ack_failed", job=entry.uuid, error=str(exc))


async def _each(coros: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather``, without a task for a lone awaitable (one watch per job, the usual case)."""
    pending = list(coros)
    if len(pending) == 1:
        return [await pending[0]]
    return await asyncio.gather(*pending)
