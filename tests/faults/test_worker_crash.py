"""SIGKILL of a worker with 100 jobs in flight: no final event lost, duplicates share ce-ids."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from tests.contract import end_id
from tests.faults.conftest import EventLog, Seen, cluster_table, drain, settled, worker_config
from tests.faults.timelines import create_jobs

pytestmark = pytest.mark.faults

JOBS = 100
#: Jobs that get a second watch while already polled: it joins, and its copy must catch up.
TWICE = 25
#: ce-type of the end states (reply_to copies are routed by queue name, not by state).
ENDS = ("ontap.job.success", "ontap.job.failure")


def split_ids(seen: list[Seen], key: str) -> dict[tuple[str, str], set[str]]:
    """Changes (by ``key`` and ce-type) that arrived under more than one ce-id."""
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in seen:
        ids[(getattr(e, key) or "", e.headers["ce-type"])].add(e.ce_id)
    return {change: found for change, found in ids.items() if len(found) > 1}


def ended_watches(replies: EventLog) -> set[str]:
    return {e.correlation_id or "" for e in replies.events if e.headers["ce-type"] in ENDS}


@pytest.mark.timeout(300)
async def test_sigkill_loses_no_final_event_and_duplicates_share_ids(
    broker, broker_log, names, sim, workers, events, replies, publish
) -> None:
    """Kill -9 mid-run, start another worker: every watch ends, twins have one ce-id."""
    simulator, base_url = sim
    config = worker_config(broker, names, clusters={"c1": cluster_table(base_url)})
    first = workers(config, name="first")
    await first.wait_ready()
    jobs = create_jobs(simulator, JOBS, random.Random(20261128))
    watches = {f"{j.uuid}/0": j for j in jobs} | {f"{j.uuid}/1": j for j in jobs[:TWICE]}

    async def watch(key: str) -> None:
        request = {"uuid": watches[key].uuid, "cluster": "c1"}
        await publish(names.watch_queue, request, correlation_id=key, reply_to=names.reply_queue)

    await asyncio.gather(*(watch(k) for k in watches if k.endswith("/0")))
    await events.wait_for(lambda es: len(es) >= TWICE, timeout_s=60)
    await asyncio.gather(*(watch(k) for k in watches if k.endswith("/1")))
    await events.wait_for(lambda _: len(events.finals()) >= JOBS * 0.3, timeout_s=120)
    first.kill()
    assert await first.wait_exit(30) == -9
    in_flight = JOBS - len(events.finals())
    assert in_flight >= 20, f"only {in_flight} jobs were in flight at the kill"

    second = workers(config, name="second")
    await second.wait_ready()
    await events.wait_for(lambda _: len(events.finals()) == JOBS, timeout_s=150)
    await replies.wait_for(lambda _: ended_watches(replies) == set(watches), timeout_s=60)
    await settled([second], broker.url, names.watch_queue)

    finals = events.finals()
    for job in jobs:
        assert {e.routing_key for e in finals[job.uuid]} == {f"job.c1.{job.final}"}, job
        # Every copy of the end, from either worker, before or after the kill: the formula's id.
        assert {e.ce_id for e in finals[job.uuid]} == {end_id("c1", job.uuid, job.final)}, job
    for key, job in watches.items():
        ends = {
            e.headers["ce-type"]
            for e in replies.events
            if e.correlation_id == key and e.headers["ce-type"] in ENDS
        }
        assert ends == {f"ontap.job.{job.final}"}, key
        copies = {
            e.ce_id
            for e in replies.events
            if e.correlation_id == key and e.headers["ce-type"] in ENDS
        }
        assert copies == {end_id("c1", job.uuid, job.final)}, key
    assert split_ids(events.events, "subject") == {}, "exchange: twins with different ce-ids"
    assert split_ids(replies.events, "correlation_id") == {}, "reply_to: twins with different ids"
    changes = {(e.subject, e.routing_key) for e in events.events}
    assert len({e.ce_id for e in events.events}) == len(changes)  # no id names two changes
    print(
        f"in flight at the kill: {in_flight}; events: {len(events.events)} for {len(changes)} "
        f"changes; replies: {len(replies.events)}"
    )
    assert await drain(broker.url, names.dead_letter_queue) == []
    assert second.problems() == []
    # An acknowledgement sent twice for one delivery makes the broker close the channel.
    assert "unknown delivery tag" not in broker_log()
