"""What happens to one watch: its events published, its progress re-enqueued, its delivery settled.

``Settler`` does the broker's part of the dispatcher's decisions, one watch at a time, in the
order that makes at-least-once hold: every event (and ``reply_to`` copy) confirmed before the
delivery it concerns is acknowledged, and a delivery from a dead channel never acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from structlog.contextvars import bound_contextvars

from poller import checkpoint
from poller.checkpoint import Checkpoint
from poller.errors import BrokerError
from poller.events import Envelope, watch_event
from poller.tracking import Outcome, Track, expire
from poller.watch import Outbox, Record, Watch

log = structlog.get_logger(__name__)
#: A failed expiry or checkpoint of a watch is not tried again before this.
ACTION_RETRY_S: Final = 2.0


class Settler:
    """The broker operations on the watches of one cluster."""

    def __init__(
        self,
        cluster: str,
        outbox: Outbox,
        *,
        on_idle: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cluster = cluster
        self._outbox = outbox
        #: Called when a job's last watch leaves: nobody here waits on it for now.
        self._on_idle = on_idle
        self._clock = clock
        #: Watches that ended here, by id, with when: a late copy of one is settled, not resumed.
        self.ended: dict[str, float] = {}
        #: The cluster's last feed call failed with this error (None while it answers).
        self.unreachable: dict[str, Any] | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def serially(
        self,
        record: Record,
        watch: Watch,
        action: Callable[[Record, Watch], Coroutine[Any, Any, Any]],
    ) -> None:
        """Run ``action`` on a held watch under its job's lock; one action at a time per watch."""
        watch.busy = True
        try:
            with bound_contextvars(cluster=self.cluster, job=record.uuid):
                async with record.lock:
                    if record.watches.get(watch.watch_id) is watch:
                        await action(record, watch)
            if record.watches.get(watch.watch_id) is watch:
                # Still held: the broker did not take the event or the copy. Try again a little
                # later rather than at every sweep.
                watch.not_before = self._clock() + ACTION_RETRY_S
        finally:
            watch.busy = False

    async def expire(self, record: Record, watch: Watch) -> None:
        """The watch's deadline passed: ``timeout``, or ``error`` when ONTAP was failing."""
        track = record.track
        if self.unreachable is not None and not track.failing:
            track = Track(track.progress, failing=True, last_error=self.unreachable)
        outcome, body = expire(track)
        await self.end_watch(record, watch, outcome, body)

    async def end_watch(
        self, record: Record, watch: Watch, outcome: Outcome, body: dict[str, Any]
    ) -> None:
        """Publish ``watch.<cluster>.<outcome>`` for one watch, then acknowledge it.

        A refused event leaves the watch held (the caller sees it still in ``record.watches``).
        """
        envelope = watch_event(
            self.cluster,
            record.uuid,
            outcome,
            body=body,
            previous_state=record.track.progress.state,
            watch_key=watch.key,
            correlation_id=watch.delivery.correlation_id,
            seen_at=self.now(),
        ).with_trace(watch.trace)
        try:
            await self.publish(envelope, [watch])
        except BrokerError as exc:
            log.warning("event.publish_failed", outcome=outcome, error=str(exc))
            return
        self.ended[watch.watch_id] = self._clock()
        await self.ack(record, watch)
        log.info("watch.ended", outcome=outcome.value)

    async def checkpoint(self, record: Record, watch: Watch) -> None:
        """Re-enqueue the watch with its progress, confirmed, then acknowledge the old delivery."""
        if watch.delivery.stale:
            return
        value = checkpoint.encode(
            Checkpoint(watch.watch_id, watch.deadline_at, record.track.progress)
        )
        try:
            await self._outbox.requeue_watch(watch, value)
        except BrokerError as exc:
            # The old delivery stays held; the next change or the checkpoint timer tries again.
            log.warning("watch.checkpoint_failed", error=str(exc))
            return
        await self.ack(record, watch)

    async def replay_latest(self, record: Record, watch: Watch) -> None:
        """A watch joining a job already known gets the job's latest event on its reply_to."""
        latest, progress = record.latest, record.track.progress
        if latest is None or watch.delivery.reply_to is None:
            return
        if watch.seen == (progress.state, progress.changes):
            return  # its own checkpoint coming back: the subscriber has this event already
        try:
            await self._outbox.publish_reply(
                latest.for_watch(watch.delivery.correlation_id, watch.trace),
                watch.delivery.reply_to,
            )
        except BrokerError as exc:
            log.warning("watch.replay_failed", job=record.uuid, error=str(exc))

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
        log.debug("watch.late_copy_settled", job=watch.request.uuid)

    async def publish(self, envelope: Envelope, watches: list[Watch]) -> None:
        await self._outbox.publish_event(envelope)
        log.debug("event.published", routing_key=envelope.routing_key, id=envelope.message_id)
        replies = [
            self._outbox.publish_reply(
                envelope.for_watch(w.delivery.correlation_id, w.trace), reply_to
            )
            for w in watches
            if (reply_to := w.delivery.reply_to) is not None and not w.delivery.stale
        ]
        await asyncio.gather(*replies)

    async def ack(self, record: Record, watch: Watch) -> None:
        # Detach first: the re-enqueued copy may already be back, registered under the same id.
        self.detach(record, watch)
        if watch.delivery.stale:
            return  # never acknowledge on a dead channel; the broker has redelivered it
        try:
            await watch.delivery.ack()
        except BrokerError as exc:
            log.warning("watch.ack_failed", job=record.uuid, error=str(exc))

    def detach(self, record: Record, watch: Watch) -> None:
        if record.watches.get(watch.watch_id) is not watch:
            return
        del record.watches[watch.watch_id]
        if not record.watches and not record.discovered:
            # Its copies are on their way back, or it ended: either way, reading it can wait.
            self._on_idle(record.uuid)

    def forget_ended(self, before: float) -> None:
        """Drop the record of watches that ended before ``before`` (oldest first, in order)."""
        while self.ended:
            watch_id, ended_at = next(iter(self.ended.items()))
            if ended_at >= before:
                return
            del self.ended[watch_id]
