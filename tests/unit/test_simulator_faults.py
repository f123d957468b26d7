"""Injected faults: plans through the control API, each kind of fault, their order and seeds."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from poller.simulator import FaultPlan, Simulator, running_simulator
from poller.simulator.faults import FaultInjector
from poller.simulator.testing import DEFAULT_AUTH, Harness, in_process

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"


@pytest.fixture
async def env() -> AsyncIterator[Harness]:
    async with in_process() as harness:
        yield harness


# --- plans, and the faults of old ----------------------------------------------------------------------------------

NO_FAULTS = FaultPlan().model_dump(mode="json")


async def test_fault_plan_round_trips(env: Harness) -> None:
    """PUT sets the plan and echoes it, GET reads it, DELETE resets it."""
    plan = {"error_rate": 0.25, "latency_ms": [1, 2], "seed": 7}
    put = await env.client.put("/_sim/faults", json=plan)
    assert (put.status_code, put.json()) == (200, {**NO_FAULTS, **plan})
    assert (await env.client.get("/_sim/faults")).json() == put.json()
    assert (await env.client.delete("/_sim/faults")).json() == NO_FAULTS


@pytest.mark.parametrize(
    "plan",
    [
        {"error_rate": 1.5},
        {"latency_ms": [5, 1]},
        {"error_status": 200},
        {"drop": 1},
        {"hang_s": 0},
        {"malformed_rate": -0.1},
    ],
)
async def test_bad_fault_plan_is_refused(env: Harness, plan: dict[str, Any]) -> None:
    """An impossible plan is a 400 and leaves the plan unchanged."""
    assert (await env.client.put("/_sim/faults", json=plan)).status_code == 400
    assert (await env.client.get("/_sim/faults")).json() == NO_FAULTS


@pytest.mark.parametrize(
    ("plan", "status", "message"),
    [
        (FaultPlan(error_rate=1.0), 500, "simulated failure"),
        (FaultPlan(error_rate=1.0, error_status=502), 502, "simulated failure"),
        (FaultPlan(status_override=403), 403, "not authorized for that command"),
        (FaultPlan(status_override=401, error_rate=1.0), 401, "not authorized for that command"),
    ],
)
async def test_error_faults_answer_in_ontap_shape(
    env: Harness, plan: FaultPlan, status: int, message: str
) -> None:
    """Error faults answer their status with an ONTAP-shaped body, and are counted."""
    env.sim.create_job(uuid=JOB)
    env.sim.faults = plan
    response = await env.job(JOB)
    assert (response.status_code, response.json()["error"]["message"]) == (status, message)
    assert env.sim.stats.by_status == {str(status): 1}


async def test_throttling_alternates_429_and_503_with_retry_after(env: Harness) -> None:
    """Throttled requests get 429 then 503, each with Retry-After in whole seconds."""
    env.sim.faults = FaultPlan(throttle_rate=1.0, retry_after_s=7)
    answers = [await env.jobs() for _ in range(3)]
    assert [answer.status_code for answer in answers] == [429, 503, 429]
    assert {answer.headers["Retry-After"] for answer in answers} == {"7"}


async def test_control_endpoints_ignore_faults(env: Harness) -> None:
    """Faults touch only the ONTAP endpoints, so a test can always steer the simulator."""
    env.sim.faults = FaultPlan(status_override=500, drop_rate=1.0)
    assert (await env.client.get("/_sim/stats")).status_code == 200


async def test_drop_without_a_socket_raises_a_transport_error(env: Harness) -> None:
    """In process there is no socket to cut: the client gets an httpx transport error instead."""
    env.sim.faults = FaultPlan(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        await env.job(JOB)
    assert env.sim.stats.by_status == {"dropped": 1}


async def test_latency_delays_the_answer(env: Harness) -> None:
    """latency_ms delays each answer by at least its minimum."""
    env.sim.faults = FaultPlan(latency_ms=(50, 60))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await env.job(JOB)
    assert loop.time() - started >= 0.05


@pytest.mark.parametrize("rate", [0.0, 1.0])
@pytest.mark.parametrize(
    "name", ["error_rate", "throttle_rate", "drop_rate", "hang_rate", "malformed_rate"]
)
def test_rates_of_zero_and_one_are_exact(name: str, rate: float) -> None:
    """A rate of 0 never fires and a rate of 1 always does."""
    injector = FaultInjector(FaultPlan.model_validate({name: rate}))
    kinds = {injector.decide().kind for _ in range(200)}
    assert kinds == ({"none"} if rate == 0 else {name.removesuffix("_rate")})


def test_seeded_plan_replays_and_respects_rates() -> None:
    """The same seed gives the same faults, at about the planned rate."""
    plan = FaultPlan(error_rate=0.3, latency_ms=(0, 10), seed=42)
    runs = (FaultInjector(plan), FaultInjector(plan))
    first, second = ([injector.decide() for _ in range(1000)] for injector in runs)
    assert first == second
    assert 240 < sum(fault.kind == "error" for fault in first) < 360


@pytest.mark.parametrize(
    ("rates", "kind"),
    [
        ({"status_override": 500, "drop_rate": 1.0}, "override"),
        ({"drop_rate": 1.0, "hang_rate": 1.0, "throttle_rate": 1.0}, "drop"),
        ({"hang_rate": 1.0, "throttle_rate": 1.0, "malformed_rate": 1.0}, "hang"),
        ({"throttle_rate": 1.0, "error_rate": 1.0, "malformed_rate": 1.0}, "throttle"),
        ({"error_rate": 1.0, "malformed_rate": 1.0}, "error"),
        ({"malformed_rate": 1.0}, "malformed"),
    ],
)
def test_faults_are_decided_in_the_documented_order(rates: dict[str, Any], kind: str) -> None:
    """When several kinds would fire, the first in the documented order decides the request."""
    assert FaultInjector(FaultPlan.model_validate(rates)).decide().kind == kind


def test_new_kinds_leave_a_seeded_plan_of_the_old_kinds_unchanged() -> None:
    """A seeded plan of drops, throttles and errors replays the faults it drew before hangs existed."""
    plan = FaultPlan(drop_rate=0.1, throttle_rate=0.2, error_rate=0.3, latency_ms=(0, 10), seed=9)
    rates = {"drop": 0.1, "throttle": 0.2, "error": 0.3}
    rng = random.Random(9)  # the draws of the first kinds: a latency, then one per kind
    expected = []
    for _ in range(500):
        rng.uniform(0, 10)
        draws = {kind: rng.random() for kind in rates}
        expected.append(next((kind for kind in rates if draws[kind] < rates[kind]), "none"))
    injector = FaultInjector(plan)
    assert [injector.decide().kind for _ in range(500)] == expected


# --- malformed answers -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"/api/cluster/jobs/{JOB}", "/api/cluster/jobs?fields=*"])
async def test_malformed_answer_is_a_200_cut_halfway(env: Harness, path: str) -> None:
    """A malformed answer is a 200 whose body is the first half of the real one: not JSON."""
    env.sim.create_job(uuid=JOB)
    env.sim.faults = FaultPlan(malformed_rate=1.0)
    malformed = await env.client.get(path)
    env.sim.faults = FaultPlan()
    good = await env.client.get(path)
    assert (malformed.status_code, good.status_code) == (200, 200)
    assert malformed.content == good.content[: len(good.content) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed.content)
    assert env.sim.stats.by_status == {"malformed": 1, "200": 1}
    assert env.sim.stats.records == 1  # the records of a malformed answer were never served


@pytest.mark.parametrize(
    ("auth", "path", "status"),
    [
        (DEFAULT_AUTH, f"/api/cluster/jobs/{JOB}", 404),
        (("admin", "wrong"), "/api/cluster/jobs", 401),
        (DEFAULT_AUTH, "/api/cluster/jobs?colour=blue", 400),
    ],
)
async def test_malformed_spares_answers_other_than_200(
    env: Harness, auth: tuple[str, str], path: str, status: int
) -> None:
    """Only an answer that would be a 200 is cut: errors keep their status and JSON body."""
    env.sim.faults = FaultPlan(malformed_rate=1.0)
    response = await env.client.get(path, auth=auth)
    assert response.status_code == status
    assert "message" in response.json()["error"]


# --- hung requests ---------------------------------------------------------------------------


async def test_hang_answers_as_usual_once_held_long_enough(env: Harness) -> None:
    """A client that waits longer than hang_s gets the usual answer, hang_s late."""
    env.sim.create_job(uuid=JOB)
    env.sim.faults = FaultPlan(hang_rate=1.0, hang_s=0.2)
    started = time.monotonic()
    response = await env.job(JOB)
    assert time.monotonic() - started >= 0.2
    assert (response.status_code, response.json()["uuid"]) == (200, JOB)
    assert env.sim.stats.by_status == {"200": 1}


async def test_hang_outlasts_a_client_timeout_over_http() -> None:
    """A hung request gets no answer: the client's own timeout fires, and the server counts it."""
    sim = Simulator(faults=FaultPlan(hang_rate=1.0, hang_s=30))
    sim.create_job(uuid=JOB)
    async with (
        running_simulator(sim) as url,
        httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH, timeout=0.3) as client,
    ):
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"/api/cluster/jobs/{JOB}")
        assert time.monotonic() - started < 5  # the client's timeout, not the hang, ended it
        for _ in range(500):  # the server notices the client leave, within 5 s
            if sim.stats.by_status == {"hung": 1}:
                break
            await asyncio.sleep(0.01)
        assert sim.stats.by_status == {"hung": 1}
        sim.faults = FaultPlan()
        assert (await client.get(f"/api/cluster/jobs/{JOB}")).status_code == 200
