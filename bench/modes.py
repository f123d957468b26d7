"""One benchmark run of one mode at one size: set up, measure, tear down, summarise.

Modes:
- ``feed``: this worker (``python -m poller run``) as configured by default: the change feed;
- ``batched``: the same worker with ``feed = false``: watched jobs read by uuid, many per call
  (the worker before the feed, and the baseline of job records served per job);
- ``per-job``: ``feed = false`` and ``batch = false``: one GET per job per read;
- ``peer``: per-job polling with netapp_ontap's ``Job(uuid=...).get()`` (bench/peer.py).

Each run creates its own jobs on a simulator emptied of the previous run's (with the feed, a worker
sees every job of the cluster) and counts the simulator's requests from zero. The capacity run is
in bench/capacity.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
from aio_pika.abc import AbstractConnection

from bench import amqp, procs
from bench.cluster import Cluster, timelines
from bench.plan import Plan, Result, count_calls, set_latencies

PEER = Path(__file__).with_name("peer.py")
#: The cluster settings of each worker mode.
WORKER_MODES: dict[str, dict[str, bool]] = {
    "feed": {"feed": True, "batch": True},
    "batched": {"feed": False, "batch": True},
    "per-job": {"feed": False, "batch": False},
}
MODES = (*WORKER_MODES, "peer")


class Bench:
    """A simulator process and a broker connection shared by every run of one invocation."""

    def __init__(
        self, plan: Plan, sim: procs.Child, sim_url: str, connection: AbstractConnection
    ) -> None:
        self.plan = plan
        self.sim = sim
        self.sim_url = sim_url
        self.cluster = Cluster(sim_url)
        self.connection = connection
        self.broker = procs.broker_meter(plan.amqp_url)

    async def aclose(self) -> None:
        await self.cluster.aclose()

    # -- set-up ----------------------------------------------------------------------------------

    async def new_jobs(self, n: int) -> dict[str, float]:
        """The same N jobs for every mode (seeded with the seed and N), alone on the simulator;
        when each ends, by uuid, in creation order."""
        p = self.plan
        rng = random.Random(f"{p.seed}/{n}")
        specs = timelines(
            n,
            min_s=p.min_duration_s,
            max_s=p.max_duration_s,
            failure_rate=p.failure_rate,
            rng=rng,
        )
        await self.cluster.clear()
        return await self.cluster.create(specs)

    def names(self, mode: str, n: int) -> dict[str, str]:
        token = f"bench.{secrets.token_hex(3)}.{mode}.{n}"
        return {
            "watch_queue": f"{token}.watch",
            "dead_letter_queue": f"{token}.dead",
            "events_exchange": f"{token}.events",
        }

    def start_worker(
        self,
        tag: str,
        names: dict[str, str],
        *,
        n: int,
        feed: bool,
        batch: bool,
        discover: bool = False,
    ) -> tuple[procs.Child, int]:
        """The worker with these cluster settings; returns once it is ready."""
        port = procs.free_port()
        config = procs.worker_config(
            self.plan.workdir / f"worker-{tag}.toml",
            amqp_url=self.plan.amqp_url,
            names=names,
            sim_url=self.sim_url,
            http_port=port,
            poll_interval_min_s=self.plan.poll_interval_min_s,
            poll_interval_max_s=self.plan.poll_interval_max_s,
            max_watches=max(10_000, n),
            feed=feed,
            batch=batch,
            discover=discover,
        )
        profile = self.plan.workdir / f"profile-{tag}.json" if self.plan.profile else None
        log_path = self.plan.workdir / f"worker-{tag}.log"
        return procs.start_worker(config, port, log_path, profile=profile), port

    def start_meters(self, measured: procs.Child) -> None:
        measured.meter.start()
        self.sim.meter.start()
        if self.broker is not None:
            self.broker.start()

    def read_meters(self) -> dict[str, float]:
        """CPU seconds of the simulator and the broker during the run: they share the machine."""
        others = {"simulator_cpu_s": self.sim.meter.read().cpu_s}
        if self.broker is not None:
            others["broker_cpu_s"] = self.broker.read().cpu_s
        return others

    def keep(self, tag: str, ends_at: dict[str, float], seen_at: dict[str, float]) -> None:
        """Per job: when it ended (simulator) and when its end was seen, for a closer look."""
        rows = {u: [at, seen_at.get(u)] for u, at in ends_at.items()}
        (self.plan.workdir / f"latencies-{tag}.json").write_text(json.dumps(rows))

    # -- the worker ------------------------------------------------------------------------------

    async def run_worker(self, mode: str, n: int) -> Result:
        tag, names = f"{mode}-{n}", self.names(mode, n)
        worker, port = await asyncio.to_thread(
            self.start_worker, tag, names, n=n, **WORKER_MODES[mode]
        )
        log = amqp.EventLog(expected=n)
        channel = await amqp.subscribe(self.connection, names["events_exchange"], log)
        try:
            ends_at = await self.new_jobs(n)
            await self.cluster.reset_stats()
            self.start_meters(worker)
            started = time.time()
            peaks: dict[str, float] = {}
            series: list[tuple[float, float, float]] = []
            sampler = asyncio.create_task(_sample(worker, port, peaks, series, self.broker))
            await amqp.publish_requests(self.connection, names["watch_queue"], list(ends_at))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.plan.max_duration_s + self.plan.grace_s):
                    await log.done.wait()
            usage, others = worker.meter.read(), self.read_meters()
            wall_s = time.time() - started
            metrics = procs.scrape_metrics(port)
            sampler.cancel()
            stats = await self.cluster.stats()
        finally:
            await asyncio.to_thread(worker.stop)
            await channel.close()
            await amqp.delete_topology(self.connection, names)
        await self.cluster.check_ends(ends_at)
        self.keep(tag, ends_at, log.final_at)
        (self.plan.workdir / f"cpu-{tag}.json").write_text(json.dumps(series))
        result = _measured(mode, n, stats, usage, wall_s)
        set_latencies(result, ends_at, log.final_at, started, self.plan.burst_s)
        result.events = log.count
        result.events_per_s = log.count / ((log.last_final_at or time.time()) - started)
        result.conflicting_final_ids, result.repeated_ends = log.conflicting, log.repeated
        events = procs.metric_sum(metrics, "ontap_poller_events_published_total")
        checkpoints = procs.metric_sum(metrics, "ontap_poller_checkpoints_total")
        result.checkpoints = int(checkpoints)
        result.broker_publishes = int(events + checkpoints)
        result.peak_watches = int(peaks.get("watches", 0))
        result.extra = others
        return result

    # -- the peer --------------------------------------------------------------------------------

    async def run_peer(self, n: int) -> Result:
        p = self.plan
        uuids_file, out = p.workdir / f"peer-{n}-uuids.json", p.workdir / f"peer-{n}-out.json"
        out.unlink(missing_ok=True)
        argv = [procs.PYTHON, str(PEER), "--url", self.sim_url, "--uuids", str(uuids_file)]
        argv += ["--out", str(out), "--interval", str(p.peer_interval_s)]
        argv += ["--threads", str(p.peer_threads)]
        argv += ["--deadline-s", str(p.max_duration_s + p.grace_s)]
        peer = procs.Child("peer", argv, p.workdir / f"peer-{n}.log", stdin=-1)
        try:
            await wait_for(lambda: "ready" in peer.log_path.read_text(), peer, 60)
            ends_at = await self.new_jobs(n)
            uuids_file.write_text(json.dumps(list(ends_at)))
            await self.cluster.reset_stats()
            self.start_meters(peer)
            started = time.time()
            assert peer.proc.stdin is not None
            peer.proc.stdin.write(b"go\n")
            peer.proc.stdin.flush()
            await wait_for(out.exists, peer, p.max_duration_s + p.grace_s + 60, sample=True)
            usage, others = peer.meter.read(), self.read_meters()
            wall_s = time.time() - started
            stats = await self.cluster.stats()
        finally:
            await asyncio.to_thread(peer.stop)
        seen = json.loads(out.read_text())
        detected, spans, events, last = {}, 0.0, 0, started
        for uuid, record in seen["jobs"].items():
            events += len(record["changes"])
            if record["changes"] and record["changes"][-1][0] in amqp.FINAL_KEYS:
                detected[uuid] = record["changes"][-1][1]
                last = max(last, detected[uuid])
                spans += (detected[uuid] - record["first_poll"]) / max(1, record["polls"] - 1)
        await self.cluster.check_ends(ends_at)
        self.keep(f"peer-{n}", ends_at, detected)
        result = _measured("peer", n, stats, usage, wall_s)
        set_latencies(result, ends_at, detected, started, p.burst_s)
        result.events = events
        result.events_per_s = events / (last - started) if last > started else 0.0
        result.achieved_interval_s = spans / len(detected) if detected else None
        result.extra = {"errors": seen["errors"], "threads": p.peer_threads, **others}
        return result


def _measured(
    mode: str, n: int, stats: dict[str, Any], usage: procs.Usage, wall_s: float
) -> Result:
    result = Result(mode=mode, n=n, cpu_s=usage.cpu_s, wall_s=wall_s)
    result.peak_rss_mb = usage.peak_rss_bytes / 2**20
    count_calls(result, stats)
    return result


async def _sample(
    child: procs.Child,
    port: int,
    peaks: dict[str, float],
    series: list[tuple[float, float, float]],
    broker: procs.Meter | None,
) -> None:
    """Peak RSS every 0.5 s; the peak number of held watches from /metrics every 2 s; a series of
    (time, worker CPU s, broker CPU s) to see where time went."""
    tick = 0
    while True:
        child.meter.sample()
        series.append(
            (time.time(), child.meter.read().cpu_s, broker.read().cpu_s if broker else 0.0)
        )
        if tick % 4 == 0:
            with contextlib.suppress(httpx.HTTPError):
                metrics = await asyncio.to_thread(procs.scrape_metrics, port)
                watches = procs.metric_sum(metrics, "ontap_poller_watches_active")
                peaks["watches"] = max(peaks.get("watches", 0), watches)
        tick += 1
        await asyncio.sleep(0.5)


async def wait_for(
    condition: Any, child: procs.Child, timeout_s: float, *, sample: bool = False
) -> None:
    """Until ``condition()`` holds; raises if ``child`` dies first, TimeoutError after the time."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            child.check_alive()
            if sample:
                child.meter.sample()
            await asyncio.sleep(0.2)
