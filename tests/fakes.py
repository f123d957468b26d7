"""The test doubles of the unit tests, one home for each: deliveries, the outbox, a terminal."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from poller.errors import BrokerError
from poller.events import Envelope
from poller.watch import Watch


@dataclass
class FakeDelivery:
    """A received watch request: counts its acks, and refuses one on a dead channel, as RabbitMQ would."""

    body: bytes = b""
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    message_id: str | None = None
    stale: bool = False
    acks: int = 0
    #: How it was settled, in order: "ack", "give_back".
    settled: list[str] = field(default_factory=list)
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    #: A timeline shared with a fake outbox, to check the order of broker operations.
    log: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        assert not self.stale, "ack on a dead channel"
        self.acks += 1
        self.settled.append("ack")
        self.log.append("ack")
        self.acked.set()

    async def give_back(self) -> None:
        self.settled.append("give_back")


@dataclass
class FakeOutbox:
    """The broker operations of the dispatcher, recorded; refusals and delays on demand."""

    log: list[str] = field(default_factory=list)
    events: list[Envelope] = field(default_factory=list)
    replies: list[tuple[str, Envelope]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    #: Publishes tried, refused ones included.
    attempts: int = 0
    #: The next publishes the broker refuses; ``fail_events`` refuses them all.
    failures: int = 0
    fail_events: bool = False
    #: Checkpoint copies the broker refuses.
    fail_requeue: bool = False
    #: Events of these states wait for ``gate`` before the broker "confirms" them.
    held_states: frozenset[str] = frozenset()
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0
    #: Called with each confirmed copy, as the broker would deliver it again (``tests.rig``).
    deliver_copy: Callable[[Watch, str], None] | None = None

    async def publish_event(self, envelope: Envelope) -> None:
        self.attempts += 1
        if self.fail_events or self.failures:
            self.failures = max(0, self.failures - 1)
            raise BrokerError("no confirm")
        if envelope.routing_key.rsplit(".", 1)[-1] in self.held_states:
            self.waiting += 1
            await self.gate.wait()
        self.events.append(envelope)
        self.log.append(f"event:{envelope.routing_key}")

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        self.replies.append((reply_to, envelope))
        self.log.append(f"reply:{reply_to}")

    async def requeue_watch(self, watch: Watch, value: str) -> None:
        if self.fail_requeue:
            raise BrokerError("copy not confirmed")
        self.checkpoints.append(json.loads(value))
        self.log.append("requeue")
        if self.deliver_copy is not None:
            self.deliver_copy(watch, value)

    def routing_keys(self) -> list[str]:
        return [e.routing_key for e in self.events]


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True
