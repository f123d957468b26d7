"""Random job timelines for the simulator, and what their final event must be."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from poller.simulator import Simulator


@dataclass(frozen=True)
class PlannedJob:
    uuid: str
    final: str  # the end state of its timeline: success or failure


def create_jobs(
    simulator: Simulator,
    count: int,
    rng: random.Random,
    *,
    running_after_s: tuple[float, float] = (0.3, 1.5),
    runs_for_s: tuple[float, float] = (1.0, 5.0),
    failure_rate: float = 0.25,
) -> list[PlannedJob]:
    """``count`` jobs: queued, running after a while, then success or failure after a while."""
    planned = []
    for _ in range(count):
        running_at = rng.uniform(*running_after_s)
        ended_at = running_at + rng.uniform(*runs_for_s)
        final = "failure" if rng.random() < failure_rate else "success"
        timeline: list[dict[str, Any]] = [
            {"after": 0, "state": "queued", "message": "Queued"},
            {"after": running_at, "state": "running", "message": "Working"},
            {
                "after": ended_at,
                "state": final,
                "message": "Complete: Successful" if final == "success" else "Disk full",
                "code": 0 if final == "success" else 13303812,
            },
        ]
        job = simulator.create_job(uuid=str(uuid.UUID(int=rng.getrandbits(128))), timeline=timeline)
        planned.append(PlannedJob(job, final))
    return planned
