"""A lease on the broker: one worker at a time holds a cluster's discovery.

No infrastructure beyond RabbitMQ. Each worker that may discover a cluster consumes one queue,
declared with ``x-single-active-consumer``: the broker delivers to one consumer at a time, and hands
the next one over when that consumer's channel closes (a clean stop, a crash, a lost connection).
The queue carries a token message; whoever holds the token, unacknowledged, holds the lease. A
holder that dies gives its token back with its channel, and the broker delivers it to the next
consumer within moments.

A held delivery must not outlive the broker's ``consumer_timeout``, so the holder renews: it
publishes a fresh token (confirmed) and acknowledges the one it held; the fresh one comes back to
it, the single active consumer. Every worker publishes a token when it starts, so a queue whose
token was lost gets one again; the queue keeps at most one waiting, and a holder acknowledges any
extra it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential, wait_random

from poller.amqp.connection import FAILURES, broker_errors
from poller.errors import BrokerError

log = structlog.get_logger(__name__)
_TOKEN: Final = b"discovery lease"


def lease_queue_arguments() -> dict[str, Any]:
    """Quorum, so that it survives a node; one consumer at a time; at most one token waiting."""
    return {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-max-length": 1,
    }


class Lease:
    """Holds, or waits for, the lease of one queue; ``on_change(True/False)`` as it is won or lost."""

    def __init__(
        self,
        connection: AbstractConnection,
        queue: str,
        *,
        on_change: Callable[[bool], None],
        renew_s: float,
    ) -> None:
        self.queue_name = queue
        self._connection = connection
        self._on_change = on_change
        self._renew_s = renew_s
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._held: AbstractIncomingMessage | None = None
        self.holding = False

    async def run(self) -> None:
        """Join the lease, again and again until it works; then renew it while held.

        Joining can fail for a moment: two workers declaring the same new quorum queue at once
        may get an internal error from the broker, and a broker may be restarting. Discovery then
        waits; the watches do not.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(BrokerError),
            wait=wait_exponential(multiplier=0.5, max=30.0) + wait_random(0, 1.0),
            before_sleep=lambda state: log.warning(
                "discovery.join_failed",
                queue=self.queue_name,
                attempt=state.attempt_number,
                error=str(state.outcome.exception() if state.outcome else None),
            ),
        )
        async for attempt in retrying:
            with attempt:
                await self._join()
        await self._renew_forever()

    async def _join(self) -> None:
        """Join the queue's consumers, and put a token in it."""
        with broker_errors(f"cannot join the lease {self.queue_name!r}"):
            self._channel = await self._connection.channel(publisher_confirms=True)
            await self._channel.set_qos(prefetch_count=1)
            self._queue = await self._channel.declare_queue(
                self.queue_name, durable=True, arguments=lease_queue_arguments()
            )
            self._channel.close_callbacks.add(self._on_close)
            await self._queue.consume(self._on_token)
            await self._publish_token()

    async def stop(self) -> None:
        """Leave: the token goes back to the queue with the channel, for the next consumer."""
        if self._channel is not None:
            with contextlib.suppress(*FAILURES):
                await self._channel.close()
        self._lose()

    async def _on_token(self, message: AbstractIncomingMessage) -> None:
        if self._held is not None:
            # One token is enough; an extra one (two workers started together) is dropped.
            with contextlib.suppress(*FAILURES):
                await message.ack()
            return
        self._held = message
        if not self.holding:
            self.holding = True
            self._on_change(True)

    def _on_close(self, *_args: Any) -> None:
        # The broker gives the token back to the queue with the channel: the lease is gone.
        self._lose()

    def _lose(self) -> None:
        self._held = None
        if self.holding:
            self.holding = False
            self._on_change(False)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_s)
            held = self._held
            if held is None:
                continue
            try:
                # The fresh token first, confirmed; only then the held one is let go.
                await self._publish_token()
                with broker_errors("lease renewal"):
                    await held.ack()
                if self._held is held:
                    self._held = None  # the fresh token comes back to this consumer
            except BrokerError as exc:
                log.warning("discovery.renew_failed", queue=self.queue_name, error=str(exc))

    async def _publish_token(self) -> None:
        assert self._channel is not None, "start() first"
        message = aio_pika.Message(_TOKEN, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        with broker_errors("lease token not published"):
            await self._channel.default_exchange.publish(message, routing_key=self.queue_name)
