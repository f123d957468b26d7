"""ONTAP's query grammar on the jobs collection: each kind of alternative, AND across fields,
errors in ONTAP's shape, `next` links that keep the query, and the cost over 20,000 jobs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from poller.simulator import Simulator
from poller.simulator.cluster import render_instant
from poller.simulator.jobs import JobSpec
from poller.simulator.testing import FakeClock, Harness, in_process, in_process_client

# Five jobs created at 19:31:04Z and read at 19:31:14Z. Times they show:
#   queued   never started                                      message "Queued"
#   running  started 19:31:05                                   message "Creating snapshot"
#   success  started 19:31:05, ended 19:31:07                   message "Complete: Successful"
#   failure  started 19:31:04, ended 19:31:06, code 917536      message "Volume is offline"
#   paused   started 19:31:05                                   no message
TIMELINES: dict[str, dict[str, Any]] = {
    "queued": {"timeline": [{"after": 0, "state": "queued", "message": "Queued"}]},
    "running": {
        "description": "App Snapshot Job",
        "timeline": [{"after": 1, "state": "running", "message": "Creating snapshot"}],
    },
    "success": {"description": "Volume Move"},
    "failure": {
        "timeline": [
            {"after": 0, "state": "running", "message": "Moving"},
            {"after": 2, "state": "failure", "message": "Volume is offline", "code": 917536},
        ]
    },
    "paused": {"timeline": [{"after": 1, "state": "paused"}]},
}
NAMES = list(TIMELINES)
UUID = {name: f"00000000-0000-0000-0000-00000000000{n}" for n, name in enumerate(NAMES)}
ALL = NAMES


@pytest.fixture
async def env() -> AsyncIterator[Harness]:
    async with in_process() as harness:
        for name, spec in TIMELINES.items():
            harness.sim.create_job(uuid=UUID[name], **spec)
        harness.clock.advance(10)
        yield harness


def names_of(body: dict[str, Any]) -> list[str]:
    by_uuid = {uuid: name for name, uuid in UUID.items()}
    return [by_uuid[record["uuid"]] for record in body["records"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([], ALL),
        ([("state", "running")], ["running"]),
        ([("state", "RUNNING")], ["running"]),
        ([("state", "queued|running|paused")], ["queued", "running", "paused"]),
        ([("state", "!success")], ["queued", "running", "failure", "paused"]),
        ([("state", "!success|!failure")], ALL),  # ORed: every job differs from one of them
        ([("state", "succ*")], ["success"]),
        ([("state", "*ED")], ["queued", "paused"]),
        ([("description", "*snapshot*")], ["running"]),
        ([("description", "volume move")], ["success"]),
        ([("description", "<b")], ["running"]),  # "app snapshot job" sorts before "b"
        ([("message", "null")], ["paused"]),
        ([("message", "!null")], ["queued", "running", "success", "failure"]),
        ([("message", "complete:*")], ["success"]),
        ([("start_time", "null")], ["queued"]),
        ([("end_time", "!null")], ["success", "failure"]),
        ([("code", "917536")], ["failure"]),
        ([("code", "!0")], ["failure"]),
        ([("code", ">0")], ["failure"]),
        ([("code", "<=0")], ["queued", "running", "success", "paused"]),
        ([("code", "9175*")], ["failure"]),
        ([("end_time", ">=2026-11-28T19:31:07+00:00")], ["success"]),
        ([("end_time", ">2026-11-28T19:31:06Z")], ["success"]),
        ([("end_time", "<2026-11-28T19:31:07Z")], ["failure"]),
        ([("end_time", "<=2026-11-28T14:31:07-05:00")], ["success", "failure"]),
        ([("end_time", "2026-11-29T04:31:06+09:00")], ["failure"]),
        ([("end_time", "2026-11-28T19:31:06.000Z")], ["failure"]),
        ([("end_time", "2026-11-28T19:31:0*")], ["success", "failure"]),
        ([("start_time", "<2026-11-28T19:31:05Z")], ["failure"]),
        ([("end_time", ">=2026-11-28T19:31:07Z|null")], ["queued", "running", "success", "paused"]),
        ([("state", "!queued"), ("end_time", "null")], ["running", "paused"]),
        ([("state", "running|failure"), ("code", "0")], ["running"]),
        ([("state", "running"), ("state", "!running")], []),  # a repeated field is ANDed too
        ([("uuid", f"!{UUID['queued']}")], ["running", "success", "failure", "paused"]),
        ([("uuid", "00000000-*")], ALL),
        ([("uuid", f"{UUID['success']}|{UUID['running']}"), ("state", "running")], ["running"]),
        ([("uuid", f"{UUID['paused']}|{UUID['queued']}")], ["paused", "queued"]),  # as asked
        ([("state", "")], []),
    ],
)
async def test_query_selects_the_jobs_ontap_would(
    env: Harness, query: list[tuple[str, str]], expected: list[str]
) -> None:
    """Each query returns exactly the jobs it describes, in creation (or asked) order."""
    response = await env.client.get("/api/cluster/jobs", params=query)
    assert response.status_code == 200
    assert names_of(response.json()) == expected


@pytest.mark.parametrize(
    ("query", "target", "code"),
    [
        ([("colour", "blue")], "colour", "262179"),
        ([("Fields", "state")], "Fields", "262179"),
        ([("end_time", ">=yesterday")], "end_time", "262185"),
        ([("start_time", "2026-13-01T00:00:00Z")], "start_time", "262185"),
        ([("end_time", "!soon")], "end_time", "262185"),
        ([("code", "abc")], "code", "262185"),
        ([("code", ">x")], "code", "262185"),
        ([("state", "running"), ("max_records", "0")], "max_records", "262185"),
    ],
)
async def test_bad_queries_get_ontaps_400(
    env: Harness, query: list[tuple[str, str]], target: str, code: str
) -> None:
    """An unknown parameter or an unreadable value is a 400 naming it, in ONTAP's error shape."""
    response = await env.client.get("/api/cluster/jobs", params=query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["target"], error["code"]) == (target, code)
    assert target in error["message"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("order_by", "start_time"), ("return_timeout", "15"), ("return_records", "true")],
)
async def test_other_collection_parameters_are_accepted(
    env: Harness, name: str, value: str
) -> None:
    """ONTAP's other collection parameters are accepted (and change nothing here)."""
    response = await env.jobs(**{name: value})
    assert (response.status_code, names_of(response.json())) == (200, ALL)


async def test_next_links_keep_the_query(env: Harness) -> None:
    """Following `next` pages through the same filtered query: each matching job once."""
    params = [("state", "queued|running|paused"), ("end_time", "null"), ("max_records", "1")]
    response = await env.client.get("/api/cluster/jobs", params=params)
    seen = names_of(response.json())
    while "next" in response.json()["_links"]:
        href = response.json()["_links"]["next"]["href"]
        assert "state=queued|running|paused&end_time=null" in href
        response = await env.client.get(href)
        seen += names_of(response.json())
    assert seen == ["queued", "running", "paused"]


# --- cost ------------------------------------------------------------------------------------


async def test_feed_queries_over_20000_jobs_take_well_under_100_ms() -> None:
    """Both feed queries over 20,000 jobs answer, JSON and all, in under 100 ms (best of 5)."""
    clock = FakeClock()
    sim = Simulator(clock=clock, timezone="America/New_York", clock_offset_s=-42.0)
    running = {"after": 1, "state": "running"}
    # Half the jobs end within ten minutes of their creation, the other half run on.
    ends = ([{"after": 2 + n % 600, "state": "success"}] if n % 2 else [] for n in range(20_000))
    specs = [JobSpec.model_validate({"timeline": [running, *end]}) for end in ends]
    sim.create_jobs(specs)
    clock.advance(300)
    since = render_instant(sim.cluster_now() - 60, sim.config.zone)
    queries = {
        "ended": {"end_time": f">={since}", "fields": "state,message,code,start_time,end_time"},
        "active": {"state": "queued|running|paused", "fields": "state,message"},
    }
    async with in_process_client(sim) as client:
        for params in queries.values():
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                response = await client.get("/api/cluster/jobs", params=params)
                timings.append(time.perf_counter() - started)
            assert response.status_code == 200
            assert response.json()["num_records"] > 500
            assert min(timings) < 0.1, f"{params}: best of 5 took {min(timings) * 1000:.0f} ms"
