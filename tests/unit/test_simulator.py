"""The simulated ONTAP jobs API: documented answers, timelines, purge, control endpoints, faults."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from poller.simulator import FaultPlan, Simulator, create_app, running_simulator
from poller.simulator.faults import FaultInjector

T0 = 1795894264.0  # 2026-11-28T19:31:04+00:00
AUTH = ("admin", "netapp1!")
NOT_FOUND = {"error": {"message": "entry doesn't exist", "code": "4", "target": "uuid"}}
NOT_AUTHORIZED = {"error": {"message": "not authorized for that command", "code": "6"}}
JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
MISSING = "ffffffff-0000-0000-0000-000000000000"
ALL_FIELDS = {"_links", "code", "description", "end_time", "message", "start_time", "state", "uuid"}
RUNNING_FOREVER = [{"after": 0, "state": "running"}]


@dataclass
class FakeClock:
    """A clock that moves only when told to."""

    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Env:
    """A simulator on a fake clock, and a client that reaches it in process."""

    sim: Simulator
    clock: FakeClock
    client: httpx.AsyncClient

    async def job(self, uuid: str, **params: str) -> httpx.Response:
        return await self.client.get(f"/api/cluster/jobs/{uuid}", params=params)

    async def jobs(self, **params: str) -> httpx.Response:
        return await self.client.get("/api/cluster/jobs", params=params)

    def make_jobs(self, count: int, timeline: Any = None) -> list[str]:
        uuids = [f"00000000-0000-0000-0000-{n:012d}" for n in range(count)]
        return [self.sim.create_job(uuid=uuid, timeline=timeline) for uuid in uuids]


def in_process_client(sim: Simulator, auth: tuple[str, str] | None = AUTH) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(sim))
    return httpx.AsyncClient(transport=transport, base_url="http://ontap", auth=auth)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    sim = Simulator(clock=clock)
    async with in_process_client(sim) as client:
        yield Env(sim, clock, client)


# --- the single-job endpoint -----------------------------------------------------------------

STARTED, ENDED = "2026-11-28T19:31:05+00:00", "2026-11-28T19:31:07+00:00"


@pytest.mark.parametrize(
    ("elapsed", "state", "message", "times"),
    [
        (0.0, "queued", "Queued", {}),
        (0.999, "queued", "Queued", {}),
        (1.0, "running", "Running", {"start_time": STARTED}),
        (3.0, "success", "Complete: Successful", {"start_time": STARTED, "end_time": ENDED}),
    ],
)
async def test_default_timeline_as_time_passes(
    env: Env, elapsed: float, state: str, message: str, times: dict[str, str]
) -> None:
    """The default job queues, runs at 1 s, succeeds at 3 s, and shows only fields with a value."""
    env.sim.create_job(uuid=JOB, description="App Snapshot Job")
    env.clock.advance(elapsed)
    response = await env.job(JOB)
    assert response.status_code == 200
    assert response.json() == {
        "_links": {"self": {"href": f"/api/cluster/jobs/{JOB}"}},
        "code": 0,
        "description": "App Snapshot Job",
        "uuid": JOB,
        "state": state,
        "message": message,
        **times,
    }


async def test_unknown_job_gets_the_documented_404(env: Env) -> None:
    """An unknown UUID answers 404 with exactly ONTAP's error body."""
    response = await env.job(JOB)
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize("purge_after_s", [0.0, 5.0, 300.0])
async def test_finished_job_is_purged_after_the_delay(env: Env, purge_after_s: float) -> None:
    """A finished job is readable until purge_after_s past its end, then 404."""
    env.sim.purge_after_s = purge_after_s
    env.sim.create_job(uuid=JOB)
    env.clock.advance(3.0 + purge_after_s - 0.001)
    assert (await env.job(JOB)).status_code == 200
    env.clock.advance(0.001)
    assert (await env.job(JOB)).json() == NOT_FOUND


async def test_unfinished_job_is_never_purged(env: Env) -> None:
    """A job with no final state stays readable however long it runs."""
    env.sim.create_job(uuid=JOB, timeline=RUNNING_FOREVER)
    env.clock.advance(10 * 86400)
    assert (await env.job(JOB)).json()["state"] == "running"


@pytest.mark.parametrize(
    ("fields", "single", "collection"),
    [
        (None, ALL_FIELDS, {"_links", "uuid"}),
        ("*", ALL_FIELDS, ALL_FIELDS),
        ("state", {"_links", "state"}, {"_links", "uuid", "state"}),
        ("state, message", {"_links", "state", "message"}, {"_links", "uuid", "state", "message"}),
    ],
)
async def test_fields_choose_what_a_job_shows(
    env: Env, fields: str | None, single: set[str], collection: set[str]
) -> None:
    """`fields` limits a job to those fields plus _links (and uuid in collections)."""
    env.sim.create_job(uuid=JOB)
    env.clock.advance(5)
    params = {} if fields is None else {"fields": fields}
    assert set((await env.job(JOB, **params)).json()) == single
    assert set((await env.jobs(**params)).json()["records"][0]) == collection


async def test_unknown_field_is_refused(env: Env) -> None:
    """A field the job object does not have is a 400, not silently ignored."""
    env.sim.create_job(uuid=JOB)
    response = await env.job(JOB, fields="state,bogus")
    assert (response.status_code, response.json()["error"]["target"]) == (400, "bogus")


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"state": "failure", "message": "Volume is offline", "code": 917536}, 917536),
        ({"state": "success"}, 0),
    ],
)
async def test_custom_timeline_gives_state_message_and_code(
    env: Env, step: dict[str, Any], expected: int
) -> None:
    """A timeline step sets state, message and code; code is 0 when the step gives none."""
    env.sim.create_job(uuid=JOB, timeline=[*RUNNING_FOREVER, {"after": 2, **step}])
    env.clock.advance(2)
    body = (await env.job(JOB)).json()
    assert (body["state"], body["code"]) == (step["state"], expected)
    assert body.get("message") == step.get("message")
    assert body["start_time"] == "2026-11-28T19:31:04+00:00"  # running from creation


async def test_timeline_without_a_step_at_zero_starts_queued(env: Env) -> None:
    """Steps are sorted, and a job whose first step is later starts queued."""
    env.sim.create_job(uuid=JOB, timeline=[{"after": 9, "state": "success"}, *RUNNING_FOREVER])
    assert (await env.job(JOB)).json()["state"] == "running"
    env.sim.create_job(uuid=MISSING, timeline=[{"after": 4, "state": "running"}])
    assert (await env.job(MISSING)).json()["state"] == "queued"


# --- the collection endpoint -----------------------------------------------------------------


async def test_collection_returns_named_jobs_in_requested_order(env: Env) -> None:
    """`uuid=a|b|c` lists only existing jobs, in the order asked, whatever the letter case."""
    a, b, _ = env.make_jobs(3)
    body = (await env.jobs(uuid=f"{b}|{MISSING}|{a.upper()}|{b}")).json()
    assert [record["uuid"] for record in body["records"]] == [b, a]
    assert body["num_records"] == 2
    assert "next" not in body["_links"]


async def test_collection_pages_follow_next_links_across_a_purge(env: Env) -> None:
    """Following `next` yields every job once, even when a job of an earlier page is purged."""
    quick = env.sim.create_job(timeline=[{"after": 0, "state": "failure"}])
    uuids = [quick, *env.make_jobs(4, timeline=RUNNING_FOREVER)]
    href: str | None = "/api/cluster/jobs?fields=state&max_records=2"
    seen: list[str] = []
    while href is not None:
        body = (await env.client.get(href)).json()
        assert body["num_records"] <= 2
        seen += [record["uuid"] for record in body["records"]]
        href = body["_links"].get("next", {}).get("href")
        env.clock.advance(300.0)  # `quick` is purged once the first page is read
    assert seen == uuids


@pytest.mark.parametrize(
    ("name", "value"), [("max_records", "0"), ("max_records", "x"), ("offset", "-1")]
)
async def test_bad_paging_values_are_refused(env: Env, name: str, value: str) -> None:
    """max_records below 1, or an offset below 0, is a 400."""
    response = await env.jobs(**{name: value})
    assert (response.status_code, response.json()["error"]["target"]) == (400, name)


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic YWRtaW46d3Jvbmc="},  # admin:wrong
        {"Authorization": "Basic cm9vdDpuZXRhcHAxIQ=="},  # root:netapp1!
        {"Authorization": "Bearer YWRtaW46bmV0YXBwMSE="},  # the right pair, wrong scheme
        {"Authorization": "Basic !!!"},
    ],
)
@pytest.mark.parametrize("path", [f"/api/cluster/jobs/{JOB}", "/api/cluster/jobs"])
async def test_ontap_endpoints_refuse_bad_credentials(
    env: Env, headers: dict[str, str], path: str
) -> None:
    """Missing or wrong credentials get 401, ONTAP's body and a Basic challenge."""
    env.sim.create_job(uuid=JOB)
    async with in_process_client(env.sim, auth=None) as anonymous:
        response = await anonymous.get(path, headers=headers)
    assert (response.status_code, response.json()) == (401, NOT_AUTHORIZED)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="ONTAP"'


# --- control endpoints -----------------------------------------------------------------------


async def test_control_creates_one_job(env: Env) -> None:
    """POST /_sim/jobs creates a job, readable by its UUID in any letter case."""
    response = await env.client.post("/_sim/jobs", json={"uuid": JOB.upper(), "description": "d"})
    assert (response.status_code, response.json()) == (201, {"uuid": JOB, "created_at": T0})
    assert (await env.job(JOB.upper())).json()["description"] == "d"


async def test_control_creates_many_jobs(env: Env) -> None:
    """A `jobs` list creates them all in one call, in order."""
    response = await env.client.post("/_sim/jobs", json={"jobs": [{}, {"uuid": JOB}, {}]})
    created = response.json()["jobs"]
    assert response.status_code == 201
    assert created[1] == {"uuid": JOB, "created_at": T0}
    assert len({job["uuid"] for job in created}) == 3


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"uuid": "not-a-uuid"}, 400),
        ({"timeline": [{"after": -1, "state": "running"}]}, 400),
        ({"timeline": [{"after": 1, "state": ""}]}, 400),
        ({"timeline": [{"after": 1, "state": "success"}, {"after": 2, "state": "running"}]}, 400),
        ({"colour": "blue"}, 400),
        ("{", 400),
        ({"jobs": [{"uuid": JOB}, {"uuid": JOB}]}, 409),
        ({"jobs": [{"uuid": JOB}, {"uuid": "00000000-0000-0000-0000-000000000000"}]}, 409),
    ],
)
async def test_control_refuses_bad_jobs(env: Env, body: Any, status: int) -> None:
    """Malformed jobs or JSON are a 400, a UUID in use a 409, and nothing is created."""
    env.make_jobs(1)
    content = body if isinstance(body, str) else json.dumps(body)
    response = await env.client.post("/_sim/jobs", content=content)
    assert response.status_code == status
    assert "message" in response.json()["error"]
    assert (await env.job(JOB)).status_code == 404


async def test_transitions_give_when_each_state_was_reached(env: Env) -> None:
    """Transitions list each change of state reached so far, with its wall-clock time."""
    steps = [
        {"after": 0, "state": "queued"},
        {"after": 1, "state": "running", "message": "10%"},
        {"after": 2, "state": "running", "message": "90%"},  # message only: no transition
        {"after": 4, "state": "success"},
    ]
    env.sim.create_job(uuid=JOB, timeline=steps)
    env.clock.advance(3.0)
    assert (await env.client.get(f"/_sim/jobs/{JOB.upper()}/transitions")).json() == {
        "uuid": JOB,
        "created_at": T0,
        "transitions": [{"state": "queued", "at": T0}, {"state": "running", "at": T0 + 1}],
    }


async def test_transitions_outlive_the_purge(env: Env) -> None:
    """A purged job's transitions stay readable; an unknown job's are a 404."""
    env.sim.create_job(uuid=JOB)
    env.clock.advance(1000.0)
    body = (await env.client.get(f"/_sim/jobs/{JOB}/transitions")).json()
    assert [t["state"] for t in body["transitions"]] == ["queued", "running", "success"]
    assert (await env.client.get(f"/_sim/jobs/{MISSING}/transitions")).status_code == 404


async def test_delete_jobs_forgets_them(env: Env) -> None:
    """DELETE /_sim/jobs removes every job."""
    env.make_jobs(3)
    assert (await env.client.delete("/_sim/jobs")).json() == {"deleted": 3}
    assert (await env.jobs()).json()["num_records"] == 0


async def test_stats_count_ontap_requests(env: Env) -> None:
    """Stats count ONTAP requests by kind and status, not control requests; DELETE resets."""
    env.sim.create_job(uuid=JOB)
    for response in [await env.job(JOB), await env.job(MISSING), await env.jobs()]:
        assert response.status_code in (200, 404)
    expected = {"requests": 3, "single": 2, "collection": 1, "by_status": {"200": 2, "404": 1}}
    assert (await env.client.get("/_sim/stats")).json() == expected
    assert (await env.client.delete("/_sim/stats")).json()["requests"] == 0
    assert env.sim.stats.requests == 0


# --- faults ----------------------------------------------------------------------------------

NO_FAULTS = FaultPlan().model_dump(mode="json")


async def test_fault_plan_round_trips(env: Env) -> None:
    """PUT sets the plan and echoes it, GET reads it, DELETE resets it."""
    plan = {"error_rate": 0.25, "latency_ms": [1, 2], "seed": 7}
    put = await env.client.put("/_sim/faults", json=plan)
    assert (put.status_code, put.json()) == (200, {**NO_FAULTS, **plan})
    assert (await env.client.get("/_sim/faults")).json() == put.json()
    assert (await env.client.delete("/_sim/faults")).json() == NO_FAULTS


@pytest.mark.parametrize(
    "plan", [{"error_rate": 1.5}, {"latency_ms": [5, 1]}, {"error_status": 200}, {"drop": 1}]
)
async def test_bad_fault_plan_is_refused(env: Env, plan: dict[str, Any]) -> None:
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
    env: Env, plan: FaultPlan, status: int, message: str
) -> None:
    """Error faults answer their status with an ONTAP-shaped body, and are counted."""
    env.sim.create_job(uuid=JOB)
    env.sim.faults = plan
    response = await env.job(JOB)
    assert (response.status_code, response.json()["error"]["message"]) == (status, message)
    assert env.sim.stats.by_status == {str(status): 1}


async def test_throttling_alternates_429_and_503_with_retry_after(env: Env) -> None:
    """Throttled requests get 429 then 503, each with Retry-After in whole seconds."""
    env.sim.faults = FaultPlan(throttle_rate=1.0, retry_after_s=7)
    answers = [await env.jobs() for _ in range(3)]
    assert [answer.status_code for answer in answers] == [429, 503, 429]
    assert {answer.headers["Retry-After"] for answer in answers} == {"7"}


async def test_control_endpoints_ignore_faults(env: Env) -> None:
    """Faults touch only the ONTAP endpoints, so a test can always steer the simulator."""
    env.sim.faults = FaultPlan(status_override=500, drop_rate=1.0)
    assert (await env.client.get("/_sim/stats")).status_code == 200


async def test_drop_without_a_socket_raises_a_transport_error(env: Env) -> None:
    """In process there is no socket to cut: the client gets an httpx transport error instead."""
    env.sim.faults = FaultPlan(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        await env.job(JOB)
    assert env.sim.stats.by_status == {"dropped": 1}


async def test_latency_delays_the_answer(env: Env) -> None:
    """latency_ms delays each answer by at least its minimum."""
    env.sim.faults = FaultPlan(latency_ms=(50, 60))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await env.job(JOB)
    assert loop.time() - started >= 0.05


@pytest.mark.parametrize("rate", [0.0, 1.0])
@pytest.mark.parametrize("name", ["error_rate", "throttle_rate", "drop_rate"])
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


# --- the real server -------------------------------------------------------------------------


async def test_real_server_answers_over_http() -> None:
    """running_simulator serves on an ephemeral port and answers a real HTTP GET."""
    sim = Simulator()
    sim.create_job(uuid=JOB)
    async with running_simulator(sim) as url, httpx.AsyncClient(base_url=url, auth=AUTH) as c:
        assert url.startswith("http://127.0.0.1:")
        response = await c.get(f"/api/cluster/jobs/{JOB}")
    assert (response.status_code, response.json()["state"]) == (200, "queued")


async def test_real_server_drops_connections_and_keeps_serving() -> None:
    """A drop fault closes the socket with no answer; the next request is served normally."""
    sim = Simulator(faults=FaultPlan(drop_rate=1.0))
    async with running_simulator(sim) as url, httpx.AsyncClient(base_url=url, auth=AUTH) as c:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await c.get(f"/api/cluster/jobs/{JOB}")
        sim.faults = FaultPlan()
        assert (await c.get(f"/api/cluster/jobs/{JOB}")).status_code == 404
    assert sim.stats.by_status == {"dropped": 1, "404": 1}


async def test_serve_raises_when_the_port_is_taken() -> None:
    """A port already in use is an OSError, not an exit of the process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="could not listen"):
            async with running_simulator(Simulator(), port=taken.getsockname()[1]):
                pass
