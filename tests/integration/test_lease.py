"""The discovery lease on a real broker: held by one, handed over, and joined again after a refusal."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from structlog.testing import capture_logs

from poller.amqp import delete_queues
from poller.amqp.lease import Lease

pytestmark = pytest.mark.integration


@pytest.fixture
async def lease_queue(amqp_url: str) -> AsyncIterator[str]:
    name = f"test.{secrets.token_hex(4)}.discover.c1"
    yield name
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await delete_queues(connection, [name])


async def until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - a flag set by callbacks of another connection
            await asyncio.sleep(0.05)


async def test_one_holder_and_a_handover_when_it_leaves(amqp_url: str, lease_queue: str) -> None:
    """Two workers: exactly one holds the lease; when it leaves, the other holds it."""
    connections = [await aio_pika.connect_robust(amqp_url) for _ in range(2)]
    changes: list[list[bool]] = [[], []]
    leases = [
        Lease(c, lease_queue, on_change=changes[i].append, renew_s=0.2)
        for i, c in enumerate(connections)
    ]
    tasks = [asyncio.create_task(lease.run()) for lease in leases]
    try:
        await until(lambda: any(lease.holding for lease in leases))
        await asyncio.sleep(1.0)  # several renewals: it stays with the first
        holders = [lease.holding for lease in leases]
        assert holders.count(True) == 1
        first = holders.index(True)
        assert changes[first] == [True]  # renewals do not let go of it, even for a moment

        await leases[first].stop()
        await until(lambda: leases[1 - first].holding)
        assert changes[first] == [True, False]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lease in leases:
            await lease.stop()
        for connection in connections:
            await connection.close()


async def test_a_refused_join_is_tried_again_until_it_works(
    amqp_url: str, lease_queue: str
) -> None:
    """The broker refuses the lease's queue for a while: the lease waits, then is held."""
    connection = await aio_pika.connect_robust(amqp_url)
    blocker = await aio_pika.connect(amqp_url)
    # A queue of that name with other arguments: declaring the lease's queue is refused.
    channel = await blocker.channel()
    await channel.declare_queue(lease_queue, durable=False, auto_delete=False)
    lease = Lease(connection, lease_queue, on_change=lambda _held: None, renew_s=5.0)
    with capture_logs() as logs:
        task = asyncio.create_task(lease.run())
        try:
            await until(lambda: any(e["event"] == "discovery.join_failed" for e in logs))
            assert not lease.holding
            await channel.queue_delete(lease_queue)
            await until(lambda: lease.holding, timeout_s=30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await lease.stop()
            with contextlib.suppress(Exception):
                await blocker.close()
            await connection.close()
