"""One ce-id per job end, whichever worker publishes it and whatever history it saw.

Two worker processes consume two different watch queues and publish to one events exchange, as
two teams' pollers sharing an event bus would. One watches a job from ``queued``, the other only
from ``paused``, so they count ``n`` differently; a third watch arrives after the job ended. Every
copy of the end must carry the contract's id, which has no ``n``.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from poller.amqp import delete_queues
from tests.contract import end_id, event_id
from tests.faults.worker_process import WorkerProcess
from tests.integration.conftest import PASSWORD, USER, Names

pytestmark = pytest.mark.integration

TIMELINE = [
    {"after": 0, "state": "queued", "message": "Queued"},
    {"after": 1.5, "state": "running", "message": "Creating volume"},
    {"after": 3.5, "state": "paused", "message": "Waiting for aggregate"},
    {"after": 6.0, "state": "running", "message": "Creating volume"},
    {"after": 8.0, "state": "success", "message": "Complete: Successful"},
]


def config(amqp_url: str, names: Names, watch_queue: str, base_url: str) -> dict[str, Any]:
    return {
        "amqp_url": amqp_url,
        "watch_queue": watch_queue,
        "dead_letter_queue": f"{watch_queue}.dead",
        "events_exchange": names.events_exchange,
        "poll_interval_min": 0.2,
        "poll_interval_max": 0.5,
        "log_format": "json",
        "clusters": {"c1": {"url": base_url, "username": USER, "password": PASSWORD}},
    }


@pytest.mark.timeout(120)
async def test_two_workers_and_a_late_watch_name_one_end_alike(
    sim, names, amqp_url, subscribe, publish, tmp_path: Path
) -> None:
    """From queued, from paused, and after the end: every job.c1.success has the formula's id."""
    simulator, base_url = sim
    token = secrets.token_hex(3)
    queues = [f"{names.watch_queue}.a{token}", f"{names.watch_queue}.b{token}"]
    workers = [
        WorkerProcess(tmp_path, f"worker-{i}", config(amqp_url, names, q, base_url)).start()
        for i, q in enumerate(queues)
    ]
    try:
        await asyncio.gather(*(w.wait_ready() for w in workers))
        events, _ = await subscribe(names.events_exchange, "#")
        replies, reply_queue = await subscribe(None)
        job = simulator.create_job(timeline=TIMELINE)

        await publish(queues[0], {"uuid": job, "cluster": "c1"})
        await events.wait_keys("job.c1.paused", timeout=30)
        await publish(queues[1], {"uuid": job, "cluster": "c1"})
        successes = await events.wait_for(
            lambda ms: sum(m.routing_key == "job.c1.success" for m in ms) >= 2, timeout=30
        )
        request = {"uuid": job, "cluster": "c1"}
        await publish(queues[1], request, correlation_id="late", reply_to=reply_queue)
        await events.wait_for(
            lambda ms: sum(m.routing_key == "job.c1.success" for m in ms) >= 3, timeout=30
        )
        late = await replies.wait_for(lambda ms: len(ms) >= 1, timeout=30)
        await asyncio.sleep(1.0)  # room for a stray copy to show itself
    finally:
        for w in workers:
            w.terminate()
        codes = [await w.wait_exit(15) for w in workers]
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await delete_queues(connection, [*queues, *(f"{q}.dead" for q in queues)])

    successes = [m for m in events.messages if m.routing_key == "job.c1.success"]
    assert len(successes) == 3, [m.routing_key for m in events.messages]
    expected = end_id("c1", job, "success")
    assert {m.headers["ce-id"] for m in successes} == {expected}
    assert {m.message_id for m in successes} == {expected}
    assert [(m.headers["ce-type"], m.headers["ce-id"]) for m in late] == [
        ("ontap.job.success", expected)
    ]
    assert late[0].correlation_id == "late"
    # The workers did hold different histories: their ids for the same non-final state differ.
    pauses = {m.headers["ce-id"] for m in events.messages if m.routing_key == "job.c1.paused"}
    assert pauses == {event_id("c1", job, 2, "paused"), event_id("c1", job, 0, "paused")}
    for w in workers:
        assert w.problems() == []
    assert codes == [0, 0]
