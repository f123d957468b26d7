"""A watch (one request waiting on a job, held as an unacknowledged delivery) and a job's record.

The dispatcher holds watches and records; these are the shapes it works with, and the broker
operations it needs, as protocols so that unit tests hand in fakes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from poller.events import Envelope
from poller.models import WatchRequest
from poller.tracecontext import TraceContext
from poller.tracking import Track


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
    """The broker operations the dispatcher needs (the worker's adapter provides them)."""

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
    #: The request's W3C trace context: it comes back on this watch's events.
    trace: TraceContext | None = None


@dataclass(eq=False, slots=True)
class Record:
    """One job as the dispatcher knows it: what was published, and who waits on it."""

    uuid: str
    track: Track
    watches: dict[str, Watch] = field(default_factory=dict)
    latest: Envelope | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Since when no watch is attached (None while some are).
    empty_since: float | None = None
    #: Published because its cluster is discovered, whether or not anyone watches it.
    discovered: bool = False
    #: The trace of the watch that started following the job: the job's events carry it.
    trace: TraceContext | None = None
