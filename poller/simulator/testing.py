"""Helpers for tests that drive a simulator in process: a clock that moves only when told to,
and a client that reaches the simulator without a socket.

    async with in_process() as env:
        uuid = env.sim.create_job()
        env.clock.advance(3)
        assert (await env.job(uuid)).json()["state"] == "success"
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from poller.simulator.app import create_app
from poller.simulator.jobs import Simulator

T0 = 1795894264.0  # 2026-11-28T19:31:04+00:00, a Saturday
DEFAULT_AUTH = ("admin", "netapp1!")


@dataclass
class FakeClock:
    """A clock that moves only when told to."""

    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (or back, with a negative number)."""
        self.now += seconds


def in_process_client(
    sim: Simulator, auth: tuple[str, str] | None = DEFAULT_AUTH, **kwargs: Any
) -> httpx.AsyncClient:
    """An httpx client that reaches `sim` through its ASGI app, at http://ontap."""
    transport = httpx.ASGITransport(app=create_app(sim))
    return httpx.AsyncClient(transport=transport, base_url="http://ontap", auth=auth, **kwargs)


@dataclass
class Harness:
    """A simulator on a fake clock, and a client that reaches it in process."""

    sim: Simulator
    clock: FakeClock
    client: httpx.AsyncClient

    async def job(self, uuid: str, **params: str) -> httpx.Response:
        """GET one job, with `params` as the query."""
        return await self.client.get(f"/api/cluster/jobs/{uuid}", params=params)

    async def jobs(self, **params: str) -> httpx.Response:
        """GET the collection, with `params` as the query."""
        return await self.client.get("/api/cluster/jobs", params=params)

    def make_jobs(self, count: int, timeline: Any = None) -> list[str]:
        """Create `count` jobs with predictable UUIDs (...-000000000000 on), in that order."""
        uuids = [f"00000000-0000-0000-0000-{n:012d}" for n in range(count)]
        return [self.sim.create_job(uuid=uuid, timeline=timeline) for uuid in uuids]


@contextlib.asynccontextmanager
async def in_process(**simulator_args: Any) -> AsyncIterator[Harness]:
    """A Harness for the block: a Simulator(**simulator_args) on a FakeClock at T0."""
    clock = FakeClock()
    sim = Simulator(clock=clock, **simulator_args)
    async with in_process_client(sim) as client:
        yield Harness(sim, clock, client)
