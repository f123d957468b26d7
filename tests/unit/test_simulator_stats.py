"""Several basic-auth users, and the counts of what each user, client and query asked for."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest

from poller.simulator import FaultPlan, Simulator, Stats, UserStats
from poller.simulator.testing import Harness, in_process, in_process_client

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
USERS = {"w1": "pw1", "w2": "pw2:with colon"}


@pytest.fixture
async def env() -> AsyncIterator[Harness]:
    async with in_process(users=USERS) as harness:
        harness.sim.create_job(uuid=JOB)
        yield harness


@pytest.mark.parametrize(
    ("user", "password", "status"),
    [
        ("admin", "netapp1!", 200),
        ("w1", "pw1", 200),
        ("w2", "pw2:with colon", 200),
        ("w1", "pw2:with colon", 401),  # another user's password
        ("w1", "wrong", 401),
        ("w3", "pw1", 401),
        ("W1", "pw1", 401),  # names are exact, as ONTAP's
    ],
)
async def test_every_configured_user_is_accepted(
    env: Harness, user: str, password: str, status: int
) -> None:
    """Each user of `users` logs in beside the main one; any other pair is refused."""
    async with in_process_client(env.sim, auth=(user, password)) as client:
        assert (await client.get(f"/api/cluster/jobs/{JOB}")).status_code == status


def test_a_user_given_two_passwords_is_refused() -> None:
    """The main user named again in `users` with another password is a mistake, said at once."""
    with pytest.raises(ValueError, match="admin"):
        Simulator(users={"admin": "other"})
    assert Simulator(users={"admin": "netapp1!"}).authenticate("admin", "netapp1!") == "admin"


async def get(env: Harness, path: str, user: str | None = "w1", **headers: str) -> int:
    auth = None if user is None else (user, {"admin": "netapp1!", **USERS}[user])
    async with in_process_client(env.sim, auth=auth) as client:
        return (await client.get(path, headers=headers)).status_code


async def test_stats_count_records_per_user(env: Harness) -> None:
    """Records served, and requests by kind, are counted in total and for each user."""
    env.sim.create_job()
    statuses = [
        await get(env, f"/api/cluster/jobs/{JOB}"),  # 1 record
        await get(env, "/api/cluster/jobs/ffffffff-0000-0000-0000-000000000000"),  # none
        await get(env, "/api/cluster/jobs?fields=state"),  # 2 records
        await get(env, f"/api/cluster/jobs?uuid={JOB}", user="w2"),  # 1 record
        await get(env, "/api/cluster/jobs", user=None),  # refused: nobody's
    ]
    assert statuses == [200, 404, 200, 200, 401]
    stats = env.sim.stats
    assert (stats.requests, stats.records) == (5, 4)
    assert stats.by_user == {
        "w1": UserStats(requests=3, single=2, collection=1, records=3),
        "w2": UserStats(requests=1, single=0, collection=1, records=1),
    }
    body = (await env.client.get("/_sim/stats")).json()
    assert body["records"] == 4
    assert body["by_user"]["w1"] == {"requests": 3, "single": 2, "collection": 1, "records": 3}


async def test_a_faulted_request_counts_for_its_user(env: Harness) -> None:
    """A request answered by a fault still counts for the user whose credentials it carried."""
    env.sim.faults = FaultPlan(error_rate=1.0)
    assert await get(env, "/api/cluster/jobs", user="w2") == 500
    assert env.sim.stats.by_user == {"w2": UserStats(requests=1, collection=1)}


async def test_stats_count_requests_by_client_app(env: Harness) -> None:
    """Requests are counted by their X-Dot-Client-App header, "" for those without one."""
    app = {"X-Dot-Client-App": "ontap-job-poller/1.0"}
    await get(env, f"/api/cluster/jobs/{JOB}", **app)
    await get(env, "/api/cluster/jobs", **app)
    await get(env, "/api/cluster/jobs", **{"X-Dot-Client-App": "ansible"})
    await get(env, "/api/cluster/jobs", user=None)
    assert env.sim.stats.by_client_app == {"ontap-job-poller/1.0": 2, "ansible": 1, "": 1}
    body = (await env.client.get("/_sim/stats")).json()
    assert body["by_client_app"] == {"": 1, "ansible": 1, "ontap-job-poller/1.0": 2}


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("", ""),
        ("?fields=state&max_records=5", ""),
        (f"?uuid={JOB}", "uuid"),
        ("?state=queued|running|paused", "state"),
        ("?end_time=>=2026-11-28T19:31:04Z", "end_time"),
        ("?state=running&end_time=null&fields=*", "end_time,state"),
        ("?state=running&state=!paused", "state"),
        ("?colour=blue", ""),  # refused (400), and not a filter field
    ],
)
async def test_stats_count_collection_requests_by_filter_fields(
    env: Harness, query: str, key: str
) -> None:
    """Collection requests are counted by the set of fields they filter on; singles are not."""
    await get(env, f"/api/cluster/jobs{query}")
    await get(env, f"/api/cluster/jobs/{JOB}")
    assert env.sim.stats.by_query == {key: 1}


async def test_stats_reset_clears_the_new_counts(env: Harness) -> None:
    """DELETE /_sim/stats zeroes every count, the new ones included."""
    await get(env, "/api/cluster/jobs?state=running", **{"X-Dot-Client-App": "a"})
    zeroed = (await env.client.delete("/_sim/stats")).json()
    assert zeroed == Stats().as_json()
    assert zeroed == {
        "requests": 0,
        "single": 0,
        "collection": 0,
        "records": 0,
        "by_status": {},
        "by_user": {},
        "by_client_app": {},
        "by_query": {},
    }


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("Basic " + base64.b64encode(b"w1").decode(), 401),  # no colon: no password
        ("Basic " + base64.b64encode("w1:pw1".encode("utf-16")).decode(), 401),  # not UTF-8
        ("basic " + base64.b64encode(b"w1:pw1").decode(), 200),  # a scheme in any case
    ],
)
async def test_odd_credentials_are_read_as_basic_auth_reads_them(
    env: Harness, header: str, status: int
) -> None:
    """Only a well-formed basic-auth pair of a known user gets in; the scheme's case is free."""
    async with in_process_client(env.sim, auth=None) as client:
        response = await client.get("/api/cluster/jobs", headers={"Authorization": header})
    assert response.status_code == status
