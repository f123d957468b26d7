"""A bad request is dead-lettered then acknowledged; if the broker refuses it, handed back at once."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from poller.config import Settings
from poller.errors import BrokerError
from poller.worker import Worker
from tests.fakes import FakeDelivery


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
