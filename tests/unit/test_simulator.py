"""The simulated ONTAP jobs API: documented answers, timelines, purge, auth, control endpoints."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from poller.simulator.testing import T0, Harness, in_process, in_process_client

NOT_FOUND = {"error": {"message": "entry doesn't exist", "code": "4", "target": "uuid"}}
NOT_AUTHORIZED = {"error": {"message": "not authorized for that command", "code": "6"}}
JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
MISSING = "ffffffff-0000-0000-0000-000000000000"
ALL_FIELDS = {"_links", "code", "description", "end_time", "message", "start_time", "state", "uuid"}
RUNNING_FOREVER = [{"after": 0, "state": "running"}]


@pytest.fixture
async def env() -> AsyncIterator[Harness]:
    async with in_process() as harness:
        yield harness


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
    env: Harness, elapsed: float, state: str, message: str, times: dict[str, str]
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


async def test_unknown_job_gets_the_documented_404(env: Harness) -> None:
    """An unknown UUID answers 404 with exactly ONTAP's error body."""
    response = await env.job(JOB)
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize("purge_after_s", [0.0, 5.0, 300.0])
async def test_finished_job_is_purged_after_the_delay(env: Harness, purge_after_s: float) -> None:
    """A finished job is readable until purge_after_s past its end, then 404."""
    env.sim.purge_after_s = purge_after_s
    env.sim.create_job(uuid=JOB)
    env.clock.advance(3.0 + purge_after_s - 0.001)
    assert (await env.job(JOB)).status_code == 200
    env.clock.advance(0.001)
    assert (await env.job(JOB)).json() == NOT_FOUND


async def test_unfinished_job_is_never_purged(env: Harness) -> None:
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
    env: Harness, fields: str | None, single: set[str], collection: set[str]
) -> None:
    """`fields` limits a job to those fields plus _links (and uuid in collections)."""
    env.sim.create_job(uuid=JOB)
    env.clock.advance(5)
    params = {} if fields is None else {"fields": fields}
    assert set((await env.job(JOB, **params)).json()) == single
    assert set((await env.jobs(**params)).json()["records"][0]) == collection


async def test_unknown_field_is_refused(env: Harness) -> None:
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
    env: Harness, step: dict[str, Any], expected: int
) -> None:
    """A timeline step sets state, message and code; code is 0 when the step gives none."""
    env.sim.create_job(uuid=JOB, timeline=[*RUNNING_FOREVER, {"after": 2, **step}])
    env.clock.advance(2)
    body = (await env.job(JOB)).json()
    assert (body["state"], body["code"]) == (step["state"], expected)
    assert body.get("message") == step.get("message")
    assert body["start_time"] == "2026-11-28T19:31:04+00:00"  # running from creation


async def test_timeline_without_a_step_at_zero_starts_queued(env: Harness) -> None:
    """Steps are sorted, and a job whose first step is later starts queued."""
    env.sim.create_job(uuid=JOB, timeline=[{"after": 9, "state": "success"}, *RUNNING_FOREVER])
    assert (await env.job(JOB)).json()["state"] == "running"
    env.sim.create_job(uuid=MISSING, timeline=[{"after": 4, "state": "running"}])
    assert (await env.job(MISSING)).json()["state"] == "queued"


# --- the collection endpoint -----------------------------------------------------------------


async def test_collection_returns_named_jobs_in_requested_order(env: Harness) -> None:
    """`uuid=a|b|c` lists only existing jobs, in the order asked, whatever the letter case."""
    a, b, _ = env.make_jobs(3)
    body = (await env.jobs(uuid=f"{b}|{MISSING}|{a.upper()}|{b}")).json()
    assert [record["uuid"] for record in body["records"]] == [b, a]
    assert body["num_records"] == 2
    assert "next" not in body["_links"]


async def test_collection_pages_follow_next_links_across_a_purge(env: Harness) -> None:
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
async def test_bad_paging_values_are_refused(env: Harness, name: str, value: str) -> None:
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
    env: Harness, headers: dict[str, str], path: str
) -> None:
    """Missing or wrong credentials get 401, ONTAP's body and a Basic challenge."""
    env.sim.create_job(uuid=JOB)
    async with in_process_client(env.sim, auth=None) as anonymous:
        response = await anonymous.get(path, headers=headers)
    assert (response.status_code, response.json()) == (401, NOT_AUTHORIZED)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="ONTAP"'


# --- control endpoints -----------------------------------------------------------------------


async def test_control_creates_one_job(env: Harness) -> None:
    """POST /_sim/jobs creates a job, readable by its UUID in any letter case."""
    response = await env.client.post("/_sim/jobs", json={"uuid": JOB.upper(), "description": "d"})
    assert (response.status_code, response.json()) == (201, {"uuid": JOB, "created_at": T0})
    assert (await env.job(JOB.upper())).json()["description"] == "d"


async def test_control_creates_many_jobs(env: Harness) -> None:
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
async def test_control_refuses_bad_jobs(env: Harness, body: Any, status: int) -> None:
    """Malformed jobs or JSON are a 400, a UUID in use a 409, and nothing is created."""
    env.make_jobs(1)
    content = body if isinstance(body, str) else json.dumps(body)
    response = await env.client.post("/_sim/jobs", content=content)
    assert response.status_code == status
    assert "message" in response.json()["error"]
    assert (await env.job(JOB)).status_code == 404


async def test_transitions_give_when_each_state_was_reached(env: Harness) -> None:
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


async def test_transitions_outlive_the_purge(env: Harness) -> None:
    """A purged job's transitions stay readable; an unknown job's are a 404."""
    env.sim.create_job(uuid=JOB)
    env.clock.advance(1000.0)
    body = (await env.client.get(f"/_sim/jobs/{JOB}/transitions")).json()
    assert [t["state"] for t in body["transitions"]] == ["queued", "running", "success"]
    assert (await env.client.get(f"/_sim/jobs/{MISSING}/transitions")).status_code == 404


async def test_delete_jobs_forgets_them(env: Harness) -> None:
    """DELETE /_sim/jobs removes every job."""
    env.make_jobs(3)
    assert (await env.client.delete("/_sim/jobs")).json() == {"deleted": 3}
    assert (await env.jobs()).json()["num_records"] == 0


async def test_stats_count_ontap_requests(env: Harness) -> None:
    """Stats count ONTAP requests by kind and status, not control requests; DELETE resets."""
    env.sim.create_job(uuid=JOB)
    for response in [await env.job(JOB), await env.job(MISSING), await env.jobs()]:
        assert response.status_code in (200, 404)
    expected = {"requests": 3, "single": 2, "collection": 1, "by_status": {"200": 2, "404": 1}}
    stats = (await env.client.get("/_sim/stats")).json()
    assert {key: stats[key] for key in expected} == expected
    assert (await env.client.delete("/_sim/stats")).json()["requests"] == 0
    assert env.sim.stats.requests == 0
