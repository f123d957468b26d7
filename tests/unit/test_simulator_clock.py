"""The cluster's own clock: the Date header, an offset ahead or behind, times in its zone, and
queries read on that clock, while timelines, purge and transitions keep the simulator's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from poller.simulator import FaultPlan, Simulator
from poller.simulator.testing import T0, Harness, in_process

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
MISSING = "ffffffff-0000-0000-0000-000000000000"


@pytest.fixture
async def env() -> AsyncIterator[Harness]:
    async with in_process() as harness:
        yield harness


@pytest.mark.parametrize(
    ("offset_s", "date"),
    [
        (0.0, "Sat, 28 Nov 2026 19:31:04 GMT"),
        (3600.0, "Sat, 28 Nov 2026 20:31:04 GMT"),  # ahead
        (-7200.5, "Sat, 28 Nov 2026 17:31:03 GMT"),  # behind, by a fraction too
        (86400.0 * 2, "Mon, 30 Nov 2026 19:31:04 GMT"),
    ],
)
async def test_date_header_is_the_clusters_clock(env: Harness, offset_s: float, date: str) -> None:
    """The Date header is the simulator's clock plus the cluster's offset, in RFC 7231 form."""
    env.sim.configure(clock_offset_s=offset_s)
    assert (await env.jobs()).headers["Date"] == date


@pytest.mark.parametrize(
    ("faults", "auth", "path", "status"),
    [
        (FaultPlan(), None, f"/api/cluster/jobs/{JOB}", 200),
        (FaultPlan(), None, f"/api/cluster/jobs/{MISSING}", 404),
        (FaultPlan(), None, "/api/cluster/jobs?colour=blue", 400),
        (FaultPlan(), ("admin", "wrong"), "/api/cluster/jobs", 401),
        (FaultPlan(throttle_rate=1.0), None, "/api/cluster/jobs", 429),
        (FaultPlan(error_rate=1.0), None, "/api/cluster/jobs", 500),
        (FaultPlan(malformed_rate=1.0), None, "/api/cluster/jobs", 200),
    ],
)
async def test_every_ontap_answer_has_a_date(
    env: Harness,
    faults: FaultPlan,
    auth: tuple[str, str] | None,
    path: str,
    status: int,
) -> None:
    """Answers, errors and faults of the ONTAP endpoints all carry the cluster's Date."""
    env.sim.create_job(uuid=JOB)
    env.sim.faults = faults
    kwargs = {} if auth is None else {"auth": auth}
    response = await env.client.get(path, **kwargs)
    assert (response.status_code, response.headers["Date"]) == (
        status,
        "Sat, 28 Nov 2026 19:31:04 GMT",
    )


@pytest.mark.parametrize(
    ("timezone", "offset_s", "start_time", "end_time"),
    [
        ("UTC", 0.0, "2026-11-28T19:31:05+00:00", "2026-11-28T19:31:07+00:00"),
        ("Z", 0.0, "2026-11-28T19:31:05+00:00", "2026-11-28T19:31:07+00:00"),
        ("-05:00", 0.0, "2026-11-28T14:31:05-05:00", "2026-11-28T14:31:07-05:00"),
        ("America/New_York", 0.0, "2026-11-28T14:31:05-05:00", "2026-11-28T14:31:07-05:00"),
        ("Asia/Kolkata", 0.0, "2026-11-29T01:01:05+05:30", "2026-11-29T01:01:07+05:30"),
        ("UTC", -90.0, "2026-11-28T19:29:35+00:00", "2026-11-28T19:29:37+00:00"),
        ("Europe/Paris", 3600.0, "2026-11-28T21:31:05+01:00", "2026-11-28T21:31:07+01:00"),
        ("+09:00", 0.6, "2026-11-29T04:31:05+09:00", "2026-11-29T04:31:07+09:00"),
    ],
)
async def test_times_are_shown_on_the_clusters_clock_in_its_zone(
    timezone: str, offset_s: float, start_time: str, end_time: str
) -> None:
    """start_time and end_time are rendered shifted by the offset, in the cluster's zone."""
    async with in_process(timezone=timezone, clock_offset_s=offset_s) as env:
        env.sim.create_job(uuid=JOB)
        env.clock.advance(5)
        single = (await env.job(JOB)).json()
        listed = (await env.jobs(fields="start_time,end_time")).json()["records"][0]
    assert (single["start_time"], single["end_time"]) == (start_time, end_time)
    assert (listed["start_time"], listed["end_time"]) == (start_time, end_time)


async def test_an_iana_zone_follows_summer_time() -> None:
    """An IANA zone renders with the offset in force at that date, daylight saving included."""
    july = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    async with in_process(timezone="America/New_York") as env:
        env.clock.now = july
        env.sim.create_job(uuid=JOB)
        env.clock.advance(5)
        assert (await env.job(JOB)).json()["end_time"] == "2026-07-01T08:00:03-04:00"


@pytest.mark.parametrize("offset_s", [-86400.0, 3600.0])
async def test_timelines_purge_and_transitions_keep_the_simulators_clock(
    offset_s: float,
) -> None:
    """An offset moves no step, no purge and no transition time: those stay on the real clock."""
    async with in_process(clock_offset_s=offset_s, purge_after_s=10.0) as env:
        env.sim.create_job(uuid=JOB)
        env.clock.advance(1.0)
        assert (await env.job(JOB)).json()["state"] == "running"
        env.clock.advance(2.0 + 10.0 - 0.001)
        assert (await env.job(JOB)).json()["state"] == "success"
        env.clock.advance(0.001)
        assert (await env.job(JOB)).status_code == 404
        transitions = (await env.client.get(f"/_sim/jobs/{JOB}/transitions")).json()
    assert transitions["created_at"] == T0
    assert [t["at"] for t in transitions["transitions"]] == [T0, T0 + 1, T0 + 3]


@pytest.mark.parametrize(
    ("end_time", "matches"),
    [
        (">=2026-11-28T20:31:07Z", True),  # the cluster's clock: an hour ahead
        (">=2026-11-28T20:31:08Z", False),
        ("<2026-11-28T19:31:08Z", False),  # the simulator's clock is not the cluster's
        ("2026-11-28T15:31:07-05:00", True),  # another zone than the one rendered
        ("2026-11-28T21:31:07", True),  # no offset: the cluster's zone (+01:00)
        ("2026-11-28T20:31:07", False),
        ("2026-11-28T21:31:07 01:00", True),  # an unencoded `+` reads as a space
        ("2026-11-28T21:31:0*", True),  # a wildcard against the time as rendered
    ],
)
async def test_time_queries_are_read_on_the_clusters_clock(end_time: str, matches: bool) -> None:
    """A time in a query is an instant on the cluster's clock, whatever zone it is written in."""
    async with in_process(clock_offset_s=3600.0, timezone="+01:00") as env:
        env.sim.create_job(uuid=JOB)
        env.clock.advance(10)
        body = (await env.jobs(end_time=end_time)).json()
    assert body["num_records"] == (1 if matches else 0)


async def test_a_time_read_from_a_record_matches_itself() -> None:
    """Times are compared to the second, as shown: a client may query with a time it was given."""
    async with in_process(clock_offset_s=0.75, timezone="America/New_York") as env:
        env.clock.advance(0.5)
        env.sim.create_job(uuid=JOB)
        env.clock.advance(5)
        end_time = (await env.job(JOB)).json()["end_time"]
        for query in (end_time, f">={end_time}", f"<={end_time}"):
            assert (await env.jobs(end_time=query)).json()["num_records"] == 1, query


def test_an_unknown_zone_is_refused_at_construction() -> None:
    """A zone the simulator cannot read is a ValueError when the simulator is made."""
    with pytest.raises(ValueError, match="Mars/Olympus"):
        Simulator(timezone="Mars/Olympus")
