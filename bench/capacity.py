"""The worker's capacity, against a bare relay that does the same AMQP work.

Both get N watch requests for jobs that have already finished, queued before they start, in a queue
declared as the worker declares its watch queue, and both publish one event per request with
publisher confirms to a topic exchange, then acknowledge the request. The rate of each is the
number of ends a subscriber received, over the time from its first to its last. The relay
(bench/relay.py) does only that; the worker also reads ONTAP, builds each event, checkpoints and
logs. Their ratio is the share of the AMQP ceiling the worker reaches.

Rounds alternate (worker, relay, worker, relay...) so that a slow moment of a shared machine
touches both; the medians are reported, with every round's figures beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import amqp, procs
from bench.cluster import Spec
from bench.modes import Bench, wait_for
from bench.plan import log

RELAY = Path(__file__).with_name("relay.py")
#: A job that has ended when its watch request arrives.
FINISHED = Spec([{"after": 0, "state": "success", "message": "Complete: Successful"}], 0.0)


@dataclass
class Round:
    """One capacity round of the worker or of the relay."""

    who: str
    n: int
    events_per_s: float
    ends: int
    cpu_s: float
    peak_rss_mb: float
    #: Messages the measured process published to the broker (events, checkpoints), per job.
    publishes_per_job: float
    broker_cpu_s: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)


async def run_capacity(bench: Bench, n: int) -> dict[str, Any]:
    """``bench.plan.capacity_repeats`` rounds each; the medians, the ratio, every round."""
    worker: list[Round] = []
    relay: list[Round] = []
    for i in range(bench.plan.capacity_repeats):
        worker.append(await _worker_round(bench, n, i))
        log(f"capacity worker round {i + 1}: {worker[-1].events_per_s:,.0f} events/s")
        relay.append(await _relay_round(bench, n, i, worker[-1].figures["sample"]))
        log(f"capacity relay round {i + 1}: {relay[-1].events_per_s:,.0f} events/s")
    worker_rate = statistics.median(r.events_per_s for r in worker)
    relay_rate = statistics.median(r.events_per_s for r in relay)
    return {
        "n": n,
        "worker_rate": worker_rate,
        "relay_rate": relay_rate,
        "fraction": worker_rate / relay_rate if relay_rate else 0.0,
        "worker": [_as_json(r) for r in worker],
        "relay": [_as_json(r) for r in relay],
    }


def _as_json(r: Round) -> dict[str, Any]:
    figures = {k: v for k, v in r.figures.items() if k != "sample"}
    return {**{k: v for k, v in vars(r).items() if k != "figures"}, **figures}


async def _queued(bench: Bench, names: dict[str, str], uuids: list[str]) -> None:
    """The watch queue as the worker declares it, with one request per job waiting in it."""
    await amqp.declare_watch_queue(bench.connection, names)
    await amqp.publish_requests(bench.connection, names["watch_queue"], uuids)


async def _measure(
    bench: Bench, child: procs.Child, ends: amqp.EventLog
) -> tuple[procs.Usage, float | None]:
    """Wait for every end (or the grace); the process's usage and the broker's CPU meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(bench.plan.grace_s):
            while not ends.done.is_set():
                child.check_alive()
                child.meter.sample()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await ends.done.wait()
    broker_s = bench.broker.read().cpu_s if bench.broker is not None else None
    return child.meter.read(), broker_s


def _rate(ends: amqp.EventLog) -> float:
    span_s = (ends.last_final_at or time.time()) - (ends.first_at or time.time())
    return len(ends.final_at) / span_s if span_s > 0 else 0.0


async def _worker_round(bench: Bench, n: int, i: int) -> Round:
    tag, names = f"capacity-{n}-{i}", bench.names("capacity", n)
    await bench.cluster.clear()
    uuids = list(await bench.cluster.create([FINISHED] * n))
    ends = amqp.EventLog(expected=n)
    channel = await amqp.subscribe(bench.connection, names["events_exchange"], ends)
    try:
        await _queued(bench, names, uuids)
        await bench.cluster.reset_stats()
        worker, port = await asyncio.to_thread(
            bench.start_worker, tag, names, n=n, feed=True, batch=True
        )
        try:
            bench.start_meters(worker)
            usage, broker_s = await _measure(bench, worker, ends)
            metrics = procs.scrape_metrics(port)
            stats = await bench.cluster.stats()
        finally:
            await asyncio.to_thread(worker.stop)
    finally:
        await channel.close()
        await amqp.delete_topology(bench.connection, names)
    assert ends.sample is not None, "no end arrived in the capacity run"
    published = procs.metric_sum(metrics, "ontap_poller_events_published_total")
    checkpoints = procs.metric_sum(metrics, "ontap_poller_checkpoints_total")
    log_lines = len((bench.plan.workdir / f"worker-{tag}.log").read_text().splitlines())
    return Round(
        "worker",
        n,
        _rate(ends),
        len(ends.final_at),
        usage.cpu_s,
        usage.peak_rss_bytes / 2**20,
        (published + checkpoints) / n,
        broker_s,
        {
            "checkpoints_per_job": checkpoints / n,
            "ontap_calls": stats["requests"],
            "ontap_records": stats["records"],
            "log_lines_per_job": log_lines / n,
            "cpu_us_per_event": 1e6 * usage.cpu_s / max(1, len(ends.final_at)),
            "conflicting_final_ids": ends.conflicting,
            "sample": ends.sample,
        },
    )


async def _relay_round(bench: Bench, n: int, i: int, sample: dict[str, Any]) -> Round:
    names = bench.names("relay", n)
    sample_file = bench.plan.workdir / "relay-sample.json"
    sample_file.write_text(json.dumps(sample))
    ends = amqp.EventLog(expected=n)
    channel = await amqp.subscribe(bench.connection, names["events_exchange"], ends)
    try:
        await _queued(bench, names, [f"relay-{n}-{i}-{k}" for k in range(n)])
        argv = [procs.PYTHON, str(RELAY), "--amqp-url", bench.plan.amqp_url]
        argv += ["--queue", names["watch_queue"], "--exchange", names["events_exchange"]]
        argv += ["--prefetch", str(max(10_000, n)), "--sample", str(sample_file)]
        profile = bench.plan.workdir / f"profile-relay-{n}-{i}.json" if bench.plan.profile else None
        log_path = bench.plan.workdir / f"relay-{n}-{i}.log"
        relay = procs.Child("relay", procs.spied(argv, profile), log_path, stdin=-1)
        try:
            # Imports and connecting are not relaying: measured from the go signal on.
            await wait_for(lambda: "ready" in relay.log_path.read_text(), relay, 60)
            if profile is not None:
                relay.measure_the_spied()
            bench.start_meters(relay)
            assert relay.proc.stdin is not None
            relay.proc.stdin.write(b"go\n")
            relay.proc.stdin.flush()
            usage, broker_s = await _measure(bench, relay, ends)
        finally:
            await asyncio.to_thread(relay.stop)
    finally:
        await channel.close()
        await amqp.delete_topology(bench.connection, names)
    return Round(
        "relay",
        n,
        _rate(ends),
        len(ends.final_at),
        usage.cpu_s,
        usage.peak_rss_bytes / 2**20,
        1.0,
        broker_s,
        {"cpu_us_per_event": 1e6 * usage.cpu_s / max(1, len(ends.final_at))},
    )
