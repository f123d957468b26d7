"""The benchmark's side of the simulator: the jobs of a run, their ends, and the request counts."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench import amqp

#: Jobs whose end time is checked against the simulator's own transitions, per run.
_CHECKED = 50


@dataclass(frozen=True)
class Spec:
    """One job: its timeline for the simulator, and when it ends, seconds after its creation."""

    timeline: list[dict[str, Any]]
    ends_after_s: float


def timelines(
    n: int, *, min_s: float, max_s: float, failure_rate: float, rng: random.Random
) -> list[Spec]:
    """queued at 0, running a little later, success (or failure) after ``min_s`` to ``max_s``."""
    specs = []
    for _ in range(n):
        ends_s = rng.uniform(min_s, max_s)
        end = "failure" if rng.random() < failure_rate else "success"
        timeline = [
            {"after": 0, "state": "queued", "message": "Queued"},
            {"after": ends_s * rng.uniform(0.05, 0.3), "state": "running"},
            {"after": ends_s, "state": end, "message": f"Complete: {end}"},
        ]
        specs.append(Spec(timeline, ends_s))
    return specs


class Cluster:
    """The simulator of one benchmark invocation, over its control endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=60.0)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def clear(self) -> None:
        """Delete every job: with the feed, a worker sees every job of the cluster, and the jobs
        of another mode would count in this mode's records."""
        (await self.http.delete("/_sim/jobs")).raise_for_status()

    async def reset_stats(self) -> None:
        (await self.http.delete("/_sim/stats")).raise_for_status()

    async def stats(self) -> dict[str, Any]:
        answer = await self.http.get("/_sim/stats")
        answer.raise_for_status()
        stats: dict[str, Any] = answer.json()
        return stats

    async def create(self, specs: list[Spec]) -> dict[str, float]:
        """Create the jobs; when each will end, on the simulator's (the real) clock, by uuid."""
        answer = await self.http.post(
            "/_sim/jobs", json={"jobs": [{"timeline": s.timeline} for s in specs]}
        )
        answer.raise_for_status()
        return {
            job["uuid"]: job["created_at"] + spec.ends_after_s
            for job, spec in zip(answer.json()["jobs"], specs, strict=True)
        }

    async def check_ends(self, ends_at: dict[str, float], sample: int = _CHECKED) -> None:
        """Latencies use the end times computed at creation; a sample of them is checked against
        ``GET /_sim/jobs/{uuid}/transitions`` (reading all 20,000 would take minutes)."""
        ended = sorted(u for u, at in ends_at.items() if at < time.time())
        chosen = random.Random(len(ended)).sample(ended, min(sample, len(ended)))

        async def one(uuid: str) -> None:
            answer = await self.http.get(f"/_sim/jobs/{uuid}/transitions")
            answer.raise_for_status()
            last = answer.json()["transitions"][-1]
            if last["state"] not in amqp.FINAL_KEYS or abs(last["at"] - ends_at[uuid]) > 1e-3:
                raise RuntimeError(f"job {uuid}: simulator says {last}, expected {ends_at[uuid]}")

        await asyncio.gather(*(one(u) for u in chosen))
