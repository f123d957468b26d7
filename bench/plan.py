"""What a benchmark run depends on (``Plan``), what one mode at one size measured (``Result``),
and the few statistics both the table and the targets read."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The simulated cluster's clock runs this far from the worker's: 7 minutes behind (the issue's).
CLUSTER_CLOCK_OFFSET_S = -420.0


@dataclass(frozen=True)
class Plan:
    """Everything a run depends on; written beside the results."""

    amqp_url: str
    workdir: Path
    min_duration_s: float = 5.0
    max_duration_s: float = 20.0
    failure_rate: float = 0.1
    seed: int = 20240611
    poll_interval_min_s: float = 1.0
    poll_interval_max_s: float = 5.0
    cluster_clock_offset_s: float = CLUSTER_CLOCK_OFFSET_S
    peer_interval_s: float = 5.0
    peer_threads: int = 32
    grace_s: float = 90.0
    #: Jobs ending this long after the watches were published are past the start-up burst.
    burst_s: float = 10.0
    capacity_repeats: int = 3
    profile: bool = False


@dataclass
class Result:
    """One mode at one size. Calls and records are the simulator's counts for this mode alone."""

    mode: str
    n: int
    ontap_requests: int = 0
    #: The split of ``ontap_requests``: the feed's two queries, uuid batches, single GETs, other.
    calls_ends: int = 0
    calls_active: int = 0
    calls_uuid: int = 0
    calls_single: int = 0
    calls_other: int = 0
    #: Job records the simulator served (every record of every answer).
    records: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    p50_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None
    #: p99 of the jobs that ended once the start-up burst was over, and how many those were.
    p99_late_s: float | None = None
    late_jobs: int = 0
    detected: int = 0
    events: int = 0
    events_per_s: float = 0.0
    #: Worker modes: events + checkpoints the worker published (the requests come on top).
    broker_publishes: int | None = None
    checkpoints: int | None = None
    peak_watches: int | None = None
    #: Jobs whose end arrived under two different ce-ids (must stay 0).
    conflicting_final_ids: int = 0
    #: Deliveries of an end beyond the first, same ce-id (at-least-once allows them).
    repeated_ends: int = 0
    #: Peer: mean time between two reads of one job, against the interval it aims at.
    achieved_interval_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def records_per_job(self) -> float:
        return self.records / self.n if self.n else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "cpu_cores": self.cpu_cores,
            "records_per_job": self.records_per_job,
        }


def count_calls(result: Result, stats: dict[str, Any]) -> None:
    """Copy the simulator's counts into ``result``: collection calls by the field they filter on
    (``end_time``: the feed's ends, ``state``: its active set, ``uuid``: batches)."""
    by_query: dict[str, int] = stats.get("by_query", {})
    result.ontap_requests = stats["requests"]
    result.records = stats["records"]
    result.calls_single = stats["single"]
    result.calls_ends = by_query.get("end_time", 0)
    result.calls_active = by_query.get("state", 0)
    result.calls_uuid = by_query.get("uuid", 0)
    split = result.calls_ends + result.calls_active + result.calls_uuid + result.calls_single
    result.calls_other = result.ontap_requests - split


def latencies(ended_at: dict[str, float], seen_at: dict[str, float]) -> list[float]:
    """Sorted detection latencies: when each end was seen, minus when the job ended."""
    return sorted(seen_at[u] - at for u, at in ended_at.items() if u in seen_at)


def set_latencies(
    result: Result,
    ended_at: dict[str, float],
    seen_at: dict[str, float],
    started: float,
    burst_s: float,
) -> None:
    """p50, p99 and max over every job; p99 again over the jobs ending after the burst.

    All N watches arrive within seconds, and each first sight is an event and a checkpoint: the
    first seconds are the busiest of a run. Jobs ending later show the steady state.
    """
    every = latencies(ended_at, seen_at)
    late = latencies({u: at for u, at in ended_at.items() if at >= started + burst_s}, seen_at)
    result.detected = len(every)
    result.p50_s, result.p99_s = quantile(every, 0.50), quantile(every, 0.99)
    result.max_s = every[-1] if every else None
    result.p99_late_s, result.late_jobs = quantile(late, 0.99), len(late)


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted ``values``."""
    if not values:
        return None
    rank = max(0, min(len(values) - 1, round(q * len(values) + 0.5) - 1))
    return values[rank]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
