"""A bad request is dead-lettered then acknowledged; if the broker refuses it, handed back at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from poller.config import Settings
from poller.errors import BrokerError
from poller.worker import Worker


@dataclass
class FakeDelivery:
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    message_id: str | None = None
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def give_back(self) -> None:
        self.settled.append("give_back")


@dataclass
class FakeBroker:
    refuse: bool = False
    dead: list[tuple[bytes, str]] = field(default_factory=list)

    async def dead_letter(self, delivery: FakeDelivery, reason: str) -> None:
        if self.refuse:
            raise BrokerError("dead-letter queue gone")
        self.dead.append((delivery.body, reason))


def worker(broker: FakeBroker) -> Worker:
    settings = Settings.model_validate({"http_port": 0})
    return Worker(settings, broker, {})  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [b"not json", b"", b"[]", b'{"uuid": "nope"}'])
async def test_a_bad_request_is_dead_lettered_then_acknowledged(body: bytes) -> None:
    """The reason goes with it; the delivery is acknowledged only after the copy was taken."""
    broker = FakeBroker()
    delivery = FakeDelivery(body)

    await worker(broker).on_delivery(delivery)  # type: ignore[arg-type]

    assert [b for b, _ in broker.dead] == [body]
    assert broker.dead[0][1]
    assert delivery.settled == ["ack"]


async def test_a_request_the_broker_will_not_dead_letter_is_handed_back_at_once() -> None:
    """Not held until the consumer timeout closes the channel with every watch on it."""
    broker = FakeBroker(refuse=True)
    delivery = FakeDelivery(b"not json")

    await worker(broker).on_delivery(delivery)  # type: ignore[arg-type]

    assert delivery.settled == ["give_back"]
