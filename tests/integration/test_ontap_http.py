"""ONTAP that hangs or answers garbage, over real HTTP: calls are cut at ``request_timeout`` and
retried; the job still ends right, or the watch ends with ``watch.<cluster>.error`` when it lasts.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from poller.errors import OntapUnavailable
from poller.ontap import OntapClient, RetryPolicy, build_http_client
from poller.simulator import FaultPlan
from tests.integration.conftest import cluster, make_settings
from tests.schemas import validate

pytestmark = pytest.mark.integration

RUNS_THEN_SUCCEEDS = [
    {"after": 0, "state": "running", "message": "Working"},
    {"after": 2, "state": "success", "message": "Complete: Successful"},
]


async def until_counted(simulator, status: str, timeout_s: float = 3.0) -> int:
    """The simulator's count of answers with ``status``, once there is one.

    A hung call is counted when the simulator notices that the client left, a moment later.
    """
    async with asyncio.timeout(timeout_s):
        while True:
            if count := simulator.stats.as_json()["by_status"].get(status):
                return int(count)
            await asyncio.sleep(0.05)


async def test_a_hung_call_is_given_up_after_request_timeout(sim) -> None:
    """ONTAP holds the call 12 s; with request_timeout 1.5 s the client gives up after 1.5 s."""
    simulator, base_url = sim
    job = simulator.create_job(timeline=RUNS_THEN_SUCCEEDS)
    simulator.faults = FaultPlan(hang_rate=1.0, hang_s=12)
    client = OntapClient(
        "c1",
        build_http_client(cluster(base_url, request_timeout=1.5)),
        retry=RetryPolicy.instant(attempts=1),
    )
    started = time.monotonic()
    try:
        async with asyncio.timeout(4):
            with pytest.raises(OntapUnavailable) as caught:
                await client.get_job(job)
    except TimeoutError:
        raise AssertionError(
            "request_timeout (1.5 s) did not reach the HTTP client: the call still waited at 4 s"
        ) from None
    finally:
        await client.aclose()
    elapsed_s = time.monotonic() - started

    assert 1.4 <= elapsed_s < 3.5, f"given up after {elapsed_s:.2f} s, not about 1.5 s"
    assert caught.value.error["message"].startswith("ReadTimeout")
    assert await until_counted(simulator, "hung") == 1

    simulator.faults = FaultPlan()
    client = OntapClient("c1", build_http_client(cluster(base_url, request_timeout=1.5)))
    try:
        assert (await client.get_job(job)).state == "running"  # the cluster is fine again
    finally:
        await client.aclose()


async def test_hung_and_malformed_answers_are_retried_and_the_job_ends_right(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """Some calls hang past request_timeout, some 200s are cut in half: the job still succeeds."""
    simulator, base_url = sim
    simulator.faults = FaultPlan(hang_rate=0.25, hang_s=5, malformed_rate=0.25, seed=11)
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url, request_timeout=0.5)})
    await start_worker(settings)
    events, _ = await subscribe(names.events_exchange, "#")
    job = simulator.create_job(timeline=RUNS_THEN_SUCCEEDS)

    await publish(names.watch_queue, {"uuid": job}, correlation_id="flaky")
    (success,) = await events.wait_keys("job.c1.success", timeout=40)

    assert json.loads(success.body)["state"] == "success"
    keys = [m.routing_key for m in events.messages]
    assert not [k for k in keys if k.startswith("watch.")], keys
    assert keys[-1] == "job.c1.success"
    by_status = simulator.stats.as_json()["by_status"]
    assert by_status.get("hung", 0) > 0, f"no call hung: {by_status}"
    assert by_status.get("malformed", 0) > 0, f"no answer was malformed: {by_status}"


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        (FaultPlan(hang_rate=1.0, hang_s=5), "ReadTimeout"),
        (FaultPlan(malformed_rate=1.0), "HTTP 200 answer is not JSON"),
    ],
    ids=["hang", "malformed"],
)
async def test_a_cluster_that_keeps_failing_ends_the_watch_with_error_saying_why(
    sim, names, amqp_url, start_worker, subscribe, publish, faults, reason
) -> None:
    """Every call hangs (or every answer is garbage) until the deadline: watch.c1.error, why."""
    simulator, base_url = sim
    simulator.faults = faults
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url, request_timeout=0.3)})
    await start_worker(settings)
    events, _ = await subscribe(names.events_exchange, "#")
    job = simulator.create_job(timeline=RUNS_THEN_SUCCEEDS)

    await publish(names.watch_queue, {"uuid": job, "timeout": 1}, correlation_id="down")
    (message,) = await events.wait_keys("watch.c1.error", timeout=60)

    assert [m.routing_key for m in events.messages] == ["watch.c1.error"]
    body = json.loads(message.body)
    validate("error.json", body)
    assert body["error"]["message"].startswith(reason), body
    assert message.correlation_id == "down"
