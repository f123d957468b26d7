"""Memory under job churn: one discovering worker, jobs created without pause, RSS over time.

    python bench/churn.py                      # 5 jobs/s (432,000 a day) for 15 minutes

starts the simulator (its clock 7 minutes behind, as in bench/run.py) and one worker with
``discover = true`` and no watch at all, waits until it holds the discovery lease, then creates
``--rate`` jobs a second (each 5 to 20 s long) for ``--duration`` seconds. The worker publishes every
job it discovers. Its RSS is sampled every ``--sample-every`` seconds. Once creation stops, the
run waits for the last jobs to end and be published, then checks that every job that ended was
published, each end under one ce-id.

The worker forgets an ended job once ONTAP has purged it: ``poller.feed.PURGE_WINDOW_S`` (300 s)
after its end, whatever the cluster's own setting; ``--purge-after`` sets only the simulator's.
A run of 15 minutes crosses that window three times. The figures and the plot come from
bench/churn_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `poller` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
import httpx
from aio_pika.abc import AbstractConnection

from bench import amqp, churn_report, procs
from bench.cluster import Cluster, timelines
from bench.plan import CLUSTER_CLOCK_OFFSET_S, log
from poller.feed import PURGE_WINDOW_S, WINDOW_MARGIN_S

#: Jobs are created in small batches this often, so that the rate is even within a second.
_CREATE_EVERY_S = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--rate", type=float, default=5.0, help="jobs created per second (default 5: 432,000 a day)")  # fmt: skip
    add("--duration", type=float, default=900.0, metavar="S", help="seconds of creation (default 900)")  # fmt: skip
    add("--min-duration", type=float, default=5.0, metavar="S", help="shortest job")
    add("--max-duration", type=float, default=20.0, metavar="S", help="longest job")
    add("--purge-after", type=float, default=procs.PURGE_AFTER_S, metavar="S",
        help="the simulator purges an ended job after S s (default 300, as ONTAP)")  # fmt: skip
    add("--cluster-clock-offset", type=float, default=CLUSTER_CLOCK_OFFSET_S, metavar="S")
    add("--poll-interval-min", type=float, default=1.0, metavar="S")
    add("--poll-interval-max", type=float, default=5.0, metavar="S")
    add("--sample-every", type=float, default=5.0, metavar="S", help="RSS sampling period")
    add("--seed", type=int, default=20240611)
    add("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    add("--workdir", type=Path, default=None, help="logs and configs (default: tmp)")
    add("--json", type=Path, default=Path("bench/results/churn.json"))
    add("--table", type=Path, default=Path("bench/results/churn.md"))
    add("--plot", type=Path, default=Path("docs/benchmarks-churn.png"))
    add("--no-plot", action="store_true")
    return parser.parse_args(argv)


class Churn:
    """Jobs created at a steady rate, and what became of them."""

    def __init__(self, args: argparse.Namespace, cluster: Cluster) -> None:
        self.args = args
        self.cluster = cluster
        self.rng = random.Random(args.seed)
        #: When each job ends, on the real clock, by uuid.
        self.ends_at: dict[str, float] = {}

    async def create_for(self, duration_s: float) -> None:
        """``rate`` jobs a second for ``duration_s``, counted from the start, so none is lost to
        the time a request takes."""
        started, created = time.time(), 0
        while (elapsed := time.time() - started) < duration_s:
            due = int(self.args.rate * elapsed) - created
            if due > 0:
                specs = timelines(
                    due,
                    min_s=self.args.min_duration,
                    max_s=self.args.max_duration,
                    failure_rate=0.1,
                    rng=self.rng,
                )
                self.ends_at.update(await self.cluster.create(specs))
                created += due
            await asyncio.sleep(_CREATE_EVERY_S)


async def sample_rss(
    worker: procs.Child, port: int, ends: amqp.EventLog, churn: Churn, series: list[dict[str, Any]]
) -> None:
    """Every ``--sample-every`` s: the worker's RSS, the jobs it tracks, created and published."""
    started = time.time()
    while True:
        rss = worker.meter.process.memory_info().rss
        worker.meter.sample()
        tracked = None
        with contextlib.suppress(httpx.HTTPError):
            metrics = await asyncio.to_thread(procs.scrape_metrics, port)
            tracked = procs.metric_sum(metrics, "ontap_poller_jobs_tracked")
        series.append(
            {
                "t_s": time.time() - started,
                "rss_mb": rss / 2**20,
                "cpu_s": worker.meter.read().cpu_s,
                "jobs_created": len(churn.ends_at),
                "ends_published": len(ends.final_at),
                "events": ends.count,
                "jobs_tracked": tracked,
            }
        )
        await asyncio.sleep(churn.args.sample_every)


async def wait_for_lease(worker: procs.Child, port: int, timeout_s: float = 60.0) -> None:
    """Until the worker holds the discovery lease: it then publishes every job of the cluster."""
    async with asyncio.timeout(timeout_s):
        while True:
            worker.check_alive()
            metrics = await asyncio.to_thread(procs.scrape_metrics, port)
            if procs.metric_sum(metrics, "ontap_poller_discoverer", cluster=amqp.CLUSTER) == 1:
                return
            await asyncio.sleep(0.2)


def start_worker(
    args: argparse.Namespace, workdir: Path, sim_url: str, names: dict[str, str]
) -> tuple[procs.Child, int]:
    """The worker as an operator would run it to publish every job: discovery on, feed on."""
    port = procs.free_port()
    config = procs.worker_config(
        workdir / "worker-churn.toml",
        amqp_url=args.amqp_url,
        names=names,
        sim_url=sim_url,
        batch=True,
        feed=True,
        discover=True,
        http_port=port,
        poll_interval_min_s=args.poll_interval_min,
        poll_interval_max_s=args.poll_interval_max,
        max_watches=10_000,
    )
    return procs.start_worker(config, port, workdir / "worker-churn.log", profile=None), port


@dataclass
class Measured:
    """What one churn run saw, before it is summarised."""

    churn: Churn
    ends: amqp.EventLog
    series: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    creation_s: float = 0.0
    wall_s: float = 0.0
    usage: procs.Usage | None = None
    stats: dict[str, Any] = field(default_factory=dict)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="poller-churn-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"work directory {workdir}")
    sim, sim_url = procs.start_simulator(
        workdir, clock_offset_s=args.cluster_clock_offset, purge_after_s=args.purge_after
    )
    cluster = Cluster(sim_url)
    seen = Measured(Churn(args, cluster), amqp.EventLog(expected=sys.maxsize))
    try:
        connection = await aio_pika.connect(args.amqp_url)
        async with connection:
            await _measure(args, workdir, connection, seen)
    finally:
        await cluster.aclose()
        sim.stop()
    return summary(args, seen)


async def _measure(
    args: argparse.Namespace, workdir: Path, connection: AbstractConnection, seen: Measured
) -> None:
    token = f"bench.{secrets.token_hex(3)}.churn"
    names = {
        "watch_queue": f"{token}.watch",
        "dead_letter_queue": f"{token}.dead",
        "events_exchange": f"{token}.events",
    }
    cluster, churn = seen.churn.cluster, seen.churn
    channel = await amqp.subscribe(connection, names["events_exchange"], seen.ends)
    worker, port = await asyncio.to_thread(start_worker, args, workdir, cluster.url, names)
    try:
        await wait_for_lease(worker, port)
        await cluster.reset_stats()
        worker.meter.start()
        seen.started = time.time()
        sampler = asyncio.create_task(sample_rss(worker, port, seen.ends, churn, seen.series))
        log(f"creating {args.rate:g} jobs/s for {args.duration:g} s ...")
        await churn.create_for(args.duration)
        seen.creation_s = time.time() - seen.started
        log("creation stopped; waiting for the last jobs to end and be published ...")
        await _drain(seen.ends, churn, worker, args)
        seen.usage = worker.meter.read()
        seen.wall_s = time.time() - seen.started
        sampler.cancel()
        seen.stats = await cluster.stats()
        await cluster.check_ends(churn.ends_at)
    finally:
        await asyncio.to_thread(worker.stop)
        await channel.close()
        await amqp.delete_topology(connection, names)


def summary(args: argparse.Namespace, seen: Measured) -> dict[str, Any]:
    assert seen.usage is not None, "the run did not finish"
    figures = churn_report.figures(
        series=seen.series,
        creation_s=seen.creation_s,
        # The first jobs end by then, and are forgotten a purge window (and a margin) later.
        window_s=PURGE_WINDOW_S + WINDOW_MARGIN_S + args.max_duration + args.poll_interval_max,
        ends_at=seen.churn.ends_at,
        ends=seen.ends,
        started=seen.started,
    )
    figures.update(
        cpu_s=seen.usage.cpu_s,
        cpu_cores=seen.usage.cpu_s / seen.wall_s,
        peak_rss_mb=seen.usage.peak_rss_bytes / 2**20,
        ontap_calls=seen.stats["requests"],
        ontap_records=seen.stats["records"],
        calls_by_query=seen.stats["by_query"],
    )
    return {
        "command": "python bench/churn.py " + " ".join(sys.argv[1:]),
        "plan": {k: str(v) for k, v in vars(args).items() if k != "amqp_url"},
        "worker_purge_window_s": PURGE_WINDOW_S,
        "elapsed_s": seen.wall_s,
        "figures": figures,
        "series": seen.series,
    }


async def _drain(
    ends: amqp.EventLog, churn: Churn, worker: procs.Child, args: argparse.Namespace
) -> None:
    """Until every created job's end was published, or a generous time passed."""
    deadline = time.time() + args.max_duration + 4 * args.poll_interval_max + 30
    while time.time() < deadline and not set(churn.ends_at) <= set(ends.final_at):
        worker.check_alive()
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = asyncio.run(procs.until_sigterm(run(args)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1))
    table = churn_report.markdown(data)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(table)
    if not args.no_plot:
        churn_report.plot(data, args.plot)
    print(table)
    log(f"done in {data['elapsed_s']:.0f} s; results in {args.json}, table in {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
