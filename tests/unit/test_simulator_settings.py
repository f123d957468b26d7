"""The cluster's settings: /_sim/config at run time, filters refused as by an old release, and
a cap on the records per page."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from poller.simulator import ClusterConfig, Simulator
from poller.simulator.testing import Harness, in_process

DEFAULTS = {"clock_offset_s": 0.0, "timezone": "UTC", "refuse_filters": False, "max_page": None}


@pytest.fixture
async def env() -> AsyncIterator[Harness]:
    async with in_process() as harness:
        yield harness


# --- /_sim/config ----------------------------------------------------------------------------


async def test_config_round_trips(env: Harness) -> None:
    """PUT replaces the settings, PATCH changes some, GET reads them, DELETE resets them."""
    assert (await env.client.get("/_sim/config")).json() == DEFAULTS
    put = await env.client.put("/_sim/config", json={"timezone": "-05:00", "max_page": 3})
    assert (put.status_code, put.json()) == (200, {**DEFAULTS, "timezone": "-05:00", "max_page": 3})
    patch = await env.client.patch("/_sim/config", json={"clock_offset_s": -30})
    expected = {**DEFAULTS, "timezone": "-05:00", "max_page": 3, "clock_offset_s": -30.0}
    assert patch.json() == expected
    assert (await env.client.get("/_sim/config")).json() == expected
    assert env.sim.config == ClusterConfig(timezone="-05:00", max_page=3, clock_offset_s=-30)
    put = await env.client.put("/_sim/config", json={"refuse_filters": True})
    assert put.json() == {**DEFAULTS, "refuse_filters": True}  # PUT: left-out keys are defaults
    assert (await env.client.delete("/_sim/config")).json() == DEFAULTS


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("PUT", {"timezone": "Mars/Olympus"}),
        ("PUT", {"timezone": "+25:00"}),
        ("PUT", {"max_page": 0}),
        ("PUT", {"clock_offset_s": "soon"}),
        ("PUT", {"clock_offset_s": 1e12}),
        ("PUT", {"colour": "blue"}),
        ("PATCH", {"timezone": ""}),
        ("PATCH", ["timezone", "UTC"]),
        ("PATCH", "{"),
    ],
)
async def test_bad_config_is_refused(env: Harness, method: str, body: Any) -> None:
    """Impossible settings are a 400 with a message, and leave the settings unchanged."""
    await env.client.put("/_sim/config", json={"max_page": 5})
    content = body if isinstance(body, str) else json.dumps(body)
    response = await env.client.request(method, "/_sim/config", content=content)
    assert response.status_code == 400
    assert "message" in response.json()["error"]
    assert (await env.client.get("/_sim/config")).json() == {**DEFAULTS, "max_page": 5}


def test_configure_checks_settings_in_process() -> None:
    """Simulator.configure changes some settings, and refuses a bad one leaving all unchanged."""
    sim = Simulator(max_page=5)
    assert sim.configure(timezone="+05:30") == ClusterConfig(timezone="+05:30", max_page=5)
    with pytest.raises(ValueError, match="max_page"):
        sim.configure(timezone="UTC", max_page=0)
    assert sim.config == ClusterConfig(timezone="+05:30", max_page=5)


async def test_config_changes_take_effect_on_the_next_request(env: Harness) -> None:
    """A changed zone and offset show in the very next answer's times and Date."""
    env.sim.create_job(timeline=[{"after": 0, "state": "success"}])
    before = await env.jobs(fields="end_time")
    await env.client.patch("/_sim/config", json={"timezone": "Asia/Tokyo", "clock_offset_s": 60})
    after = await env.jobs(fields="end_time")
    assert before.json()["records"][0]["end_time"] == "2026-11-28T19:31:04+00:00"
    assert after.json()["records"][0]["end_time"] == "2026-11-29T04:32:04+09:00"
    assert after.headers["Date"] == "Sat, 28 Nov 2026 19:32:04 GMT"


# --- refused filters -------------------------------------------------------------------------


FIRST, SECOND = "00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize(
    ("query", "outcome"),
    [
        ({"uuid": f"{FIRST}|{SECOND}"}, 2),
        ({"uuid": "00000000-*", "fields": "state", "max_records": "1"}, 1),
        ({"state": "queued|running|paused"}, "state"),
        ({"end_time": ">=2026-11-28T19:31:04Z"}, "end_time"),
        ({"uuid": FIRST, "code": "0"}, "code"),
    ],
)
async def test_refused_filters_leave_uuid_batches_working(
    query: dict[str, str], outcome: int | str
) -> None:
    """With refuse_filters, uuid queries answer (records) and any other filter is a 400 (field)."""
    async with in_process(refuse_filters=True) as env:
        env.make_jobs(2)
        response = await env.jobs(**query)
    if isinstance(outcome, int):
        assert (response.status_code, response.json()["num_records"]) == (200, outcome)
    else:
        assert response.status_code == 400
        assert response.json()["error"] == {
            "message": f'Unexpected argument "{outcome}".',
            "code": "262179",
            "target": outcome,
        }


async def test_filters_can_be_refused_and_allowed_at_run_time(env: Harness) -> None:
    """refuse_filters set through /_sim/config takes effect at once, both ways."""
    assert (await env.jobs(state="running")).status_code == 200
    await env.client.patch("/_sim/config", json={"refuse_filters": True})
    assert (await env.jobs(state="running")).status_code == 400
    await env.client.patch("/_sim/config", json={"refuse_filters": False})
    assert (await env.jobs(state="running")).status_code == 200


# --- the page cap ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_page", "params", "sizes"),
    [
        (3, {}, [3, 3, 1]),
        (3, {"max_records": "5"}, [3, 3, 1]),
        (3, {"max_records": "2"}, [2, 2, 2, 1]),
        (None, {"max_records": "4"}, [4, 3]),
        (7, {}, [7]),
        (1, {"state": "!success"}, [1, 1, 1, 1]),  # filtered: only the matching jobs, paged
    ],
)
async def test_page_cap_forces_pages_that_give_every_record_once(
    max_page: int | None, params: dict[str, str], sizes: list[int]
) -> None:
    """No page exceeds max_page or max_records; following `next` yields each record once."""
    async with in_process(max_page=max_page) as env:
        states = ["success" if n % 2 else "running" for n in range(7)]
        uuids = [env.sim.create_job(timeline=[{"after": 0, "state": s}]) for s in states]
        pages = [(await env.jobs(**params)).json()]
        while "next" in pages[-1]["_links"]:
            pages.append((await env.client.get(pages[-1]["_links"]["next"]["href"])).json())
    filtered = "state" in params
    expected = [
        uuid for uuid, s in zip(uuids, states, strict=True) if not (filtered and s == "success")
    ]
    assert [page["num_records"] for page in pages] == sizes
    assert [record["uuid"] for page in pages for record in page["records"]] == expected
