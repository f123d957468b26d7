"""Fakes shared by the unit tests of the dispatcher and the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeDelivery:
    """A held watch request: counts its acks, and refuses one on a dead channel, as RabbitMQ would."""

    correlation_id: str | None = None
    reply_to: str | None = None
    stale: bool = False
    acks: int = 0
    #: A timeline shared with a fake outbox, to check the order of broker operations.
    log: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        assert not self.stale, "ack on a dead channel"
        self.acks += 1
        self.log.append("ack")
