"""One benchmark run of one mode at one size: set up, measure, tear down, summarise.

Modes:
- ``batched``: this worker (``python -m poller run``), reading due jobs with the collection call;
- ``per-job``: the same worker with ``batch = false``, one GET per job per poll;
- ``peer``: per-job polling with netapp_ontap's ``Job(uuid=...).get()`` (bench/peer.py);
- ``capacity``: the worker's event rate when N already-finished jobs are waiting in its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aio_pika.abc import AbstractConnection

from bench import amqp, procs
from poller.ontap import batch_size

PEER = Path(__file__).with_name("peer.py")
#: Jobs ending this long after the watches were published are past the start-up burst.
BURST_S = 20.0


@dataclass(frozen=True)
class Plan:
    """Everything a run depends on; written beside the results."""

    amqp_url: str
    workdir: Path
    min_duration_s: float = 5.0
    max_duration_s: float = 60.0
    failure_rate: float = 0.1
    seed: int = 20240611
    poll_interval_min_s: float = 1.0
    poll_interval_max_s: float = 5.0
    peer_interval_s: float = 5.0
    peer_threads: int = 32
    grace_s: float = 90.0
    raw_repeats: int = 3
    profile: bool = False


@dataclass
class Result:
    mode: str
    n: int
    ontap_requests: int = 0
    single_requests: int = 0
    collection_requests: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    p50_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None
    detected: int = 0
    events: int = 0
    events_per_s: float = 0.0
    #: Worker modes: events + checkpoints the worker published (the requests come on top).
    broker_publishes: int | None = None
    checkpoints: int | None = None
    peak_watches: int | None = None
    #: Jobs whose final event arrived under two different ce-ids (must stay 0).
    conflicting_final_ids: int = 0
    #: Peer: mean time between two reads of one job, against the 5 s it aims at.
    achieved_interval_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_cores": self.cpu_cores}


class Bench:
    """A simulator process and a broker connection shared by every run of one invocation."""

    def __init__(
        self, plan: Plan, sim: procs.Child, sim_url: str, connection: AbstractConnection
    ) -> None:
        self.plan = plan
        self.sim = sim
        self.sim_url = sim_url
        self.connection = connection
        self.http = httpx.AsyncClient(base_url=sim_url, timeout=60.0)
        self.broker = procs.broker_meter(plan.amqp_url)

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- the simulator ---------------------------------------------------------------------------

    def timelines(self, n: int) -> list[dict[str, Any]]:
        """queued at 0, running a little later, success (or failure) after 5 to 60 s.

        The same N jobs for every mode: the generator is seeded with the seed and N.
        """
        p, specs = self.plan, []
        rng = random.Random(f"{p.seed}/{n}")
        for _ in range(n):
            ends_s = rng.uniform(p.min_duration_s, p.max_duration_s)
            end = "failure" if rng.random() < p.failure_rate else "success"
            specs.append(
                {
                    "timeline": [
                        {"after": 0, "state": "queued", "message": "Queued"},
                        {"after": ends_s * rng.uniform(0.05, 0.3), "state": "running"},
                        {"after": ends_s, "state": end, "message": f"Complete: {end}"},
                    ]
                }
            )
        return specs

    async def create_jobs(self, specs: list[dict[str, Any]]) -> list[str]:
        await self.http.delete("/_sim/jobs")
        answer = await self.http.post("/_sim/jobs", json={"jobs": specs})
        answer.raise_for_status()
        await self.http.delete("/_sim/stats")
        return [job["uuid"] for job in answer.json()["jobs"]]

    async def final_transitions(self, uuids: list[str]) -> dict[str, float]:
        """When each job reached its final state, as the simulator recorded it."""
        limit = asyncio.Semaphore(16)
        finals: dict[str, float] = {}

        async def one(uuid: str) -> None:
            async with limit:
                answer = await self.http.get(f"/_sim/jobs/{uuid}/transitions")
            last = answer.json()["transitions"][-1]
            if last["state"] in amqp.FINAL_KEYS:
                finals[uuid] = last["at"]

        await asyncio.gather(*(one(u) for u in uuids))
        return finals

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = (await self.http.get("/_sim/stats")).json()
        return stats

    def _start_meters(self, measured: procs.Child) -> None:
        measured.meter.start()
        self.sim.meter.start()
        if self.broker is not None:
            self.broker.start()

    def _read_meters(self) -> dict[str, float]:
        """CPU seconds of the simulator and the broker during the run: they share the machine."""
        others = {"simulator_cpu_s": self.sim.meter.read().cpu_s}
        if self.broker is not None:
            others["broker_cpu_s"] = self.broker.read().cpu_s
        return others

    def _keep(self, tag: str, finals: dict[str, float], detected: dict[str, float]) -> None:
        """Per job: when it ended (simulator) and when its end was seen, for a closer look."""
        rows = {u: [at, detected.get(u)] for u, at in finals.items()}
        (self.plan.workdir / f"latencies-{tag}.json").write_text(json.dumps(rows))

    # -- runs ------------------------------------------------------------------------------------

    def _names(self, mode: str, n: int) -> dict[str, str]:
        token = f"bench.{secrets.token_hex(3)}.{mode}.{n}"
        return {
            "watch_queue": f"{token}.watch",
            "dead_letter_queue": f"{token}.dead",
            "events_exchange": f"{token}.events",
        }

    def _start_worker(self, mode: str, n: int, names: dict[str, str]) -> tuple[procs.Child, int]:
        port = procs.free_port()
        tag = f"{mode}-{n}"
        config = procs.worker_config(
            self.plan.workdir / f"worker-{tag}.toml",
            amqp_url=self.plan.amqp_url,
            names=names,
            sim_url=self.sim_url,
            batch=mode != "per-job",
            feed=mode != "per-job",
            http_port=port,
            poll_interval_min_s=self.plan.poll_interval_min_s,
            poll_interval_max_s=self.plan.poll_interval_max_s,
            max_watches=max(10_000, n),
        )
        profile = self.plan.workdir / f"profile-{tag}.json" if self.plan.profile else None
        log_path = self.plan.workdir / f"worker-{tag}.log"
        return procs.start_worker(config, port, log_path, profile=profile), port

    async def run_worker(self, mode: str, n: int) -> Result:
        names = self._names(mode, n)
        worker, port = await asyncio.to_thread(self._start_worker, mode, n, names)
        try:
            log = amqp.EventLog(expected=n)
            await amqp.subscribe(self.connection, names["events_exchange"], log)
            uuids = await self.create_jobs(self.timelines(n))
            self._start_meters(worker)
            started = time.time()
            peaks: dict[str, float] = {}
            series: list[tuple[float, float, float]] = []
            sampler = asyncio.create_task(_sample(worker, port, peaks, series, self.broker))
            await amqp.publish_requests(self.connection, names["watch_queue"], uuids)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.plan.max_duration_s + self.plan.grace_s):
                    await log.done.wait()
            usage = worker.meter.read()
            others = self._read_meters()
            wall_s = time.time() - started
            metrics = procs.scrape_metrics(port)
            sampler.cancel()
            stats = await self.stats()
        finally:
            await asyncio.to_thread(worker.stop)
            await amqp.delete_topology(self.connection, names)
        finals = await self.final_transitions(uuids)
        self._keep(f"{mode}-{n}", finals, log.final_at)
        (self.plan.workdir / f"cpu-{mode}-{n}.json").write_text(json.dumps(series))
        result = _summary(
            mode,
            n=n,
            stats=stats,
            usage=usage,
            wall_s=wall_s,
            detected_at=log.final_at,
            finals=finals,
            events=log.count,
        )
        result.events_per_s = log.count / ((log.last_final_at or time.time()) - started)
        result.conflicting_final_ids = sum(1 for ids in log.final_ids.values() if len(ids) > 1)
        events = procs.metric_sum(metrics, "ontap_poller_events_published_total")
        checkpoints = procs.metric_sum(metrics, "ontap_poller_checkpoints_total")
        result.checkpoints = int(checkpoints)
        result.broker_publishes = int(events + checkpoints)
        result.peak_watches = int(peaks.get("watches", 0))
        result.extra = {**others, "p99_after_burst_s": _late_p99(finals, log.final_at, started)}
        return result

    async def run_peer(self, n: int) -> Result:
        p = self.plan
        uuids_file, out = p.workdir / f"peer-{n}-uuids.json", p.workdir / f"peer-{n}-out.json"
        out.unlink(missing_ok=True)
        argv = [procs.PYTHON, str(PEER), "--url", self.sim_url, "--uuids", str(uuids_file)]
        argv += ["--out", str(out), "--interval", str(p.peer_interval_s)]
        argv += [
            "--threads",
            str(p.peer_threads),
            "--deadline-s",
            str(p.max_duration_s + p.grace_s),
        ]
        peer = procs.Child("peer", argv, p.workdir / f"peer-{n}.log", stdin=-1)
        try:
            await _wait_for(lambda: "ready" in peer.log_path.read_text(), peer, 60)
            uuids = await self.create_jobs(self.timelines(n))
            uuids_file.write_text(json.dumps(uuids))
            self._start_meters(peer)
            started = time.time()
            assert peer.proc.stdin is not None
            peer.proc.stdin.write(b"go\n")
            peer.proc.stdin.flush()
            await _wait_for(out.exists, peer, p.max_duration_s + p.grace_s + 60, sample=True)
            usage = peer.meter.read()
            others = self._read_meters()
            wall_s = time.time() - started
            stats = await self.stats()
        finally:
            await asyncio.to_thread(peer.stop)
        seen = json.loads(out.read_text())
        detected, polls, spans, events, last = {}, 0, 0.0, 0, started
        for uuid, record in seen["jobs"].items():
            events += len(record["changes"])
            polls += record["polls"]
            if record["changes"] and record["changes"][-1][0] in amqp.FINAL_KEYS:
                detected[uuid] = record["changes"][-1][1]
                last = max(last, detected[uuid])
                spans += (detected[uuid] - record["first_poll"]) / max(1, record["polls"] - 1)
        finals = await self.final_transitions(uuids)
        self._keep(f"peer-{n}", finals, detected)
        result = _summary(
            "peer",
            n=n,
            stats=stats,
            usage=usage,
            wall_s=wall_s,
            detected_at=detected,
            finals=finals,
            events=events,
        )
        result.events_per_s = events / (last - started) if last > started else 0.0
        result.achieved_interval_s = spans / len(detected) if detected else None
        result.extra = {
            "errors": seen["errors"],
            "threads": p.peer_threads,
            **others,
            "p99_after_burst_s": _late_p99(finals, detected, started),
        }
        return result

    async def run_capacity(self, n: int) -> tuple[Result, float, list[float]]:
        """The worker's event rate with ``n`` finished jobs queued before it starts, and the
        broker's raw confirmed-publish rate for messages of the same size and shape."""
        names = self._names("capacity", n)
        uuids = await self.create_jobs([{"timeline": [{"after": 0, "state": "success"}]}] * n)
        await amqp.declare_watch_queue(self.connection, names)
        log = amqp.EventLog(expected=n)
        await amqp.subscribe(self.connection, names["events_exchange"], log)
        await amqp.publish_requests(self.connection, names["watch_queue"], uuids)
        worker, _ = await asyncio.to_thread(self._start_worker, "capacity", n, names)
        try:
            worker.meter.start()
            started = time.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.plan.grace_s):
                    await log.done.wait()
            usage = worker.meter.read()
            wall_s = time.time() - started
            stats = await self.stats()
        finally:
            await asyncio.to_thread(worker.stop)
            await amqp.delete_topology(self.connection, names)
        result = _summary(
            "capacity",
            n=n,
            stats=stats,
            usage=usage,
            wall_s=wall_s,
            detected_at={},
            finals={},
            events=log.count,
        )
        span_s = (log.last_final_at or time.time()) - (log.first_at or started)
        result.events_per_s = len(log.final_at) / span_s if span_s > 0 else 0.0
        result.detected = len(log.final_at)
        assert log.sample is not None, "no event arrived in the capacity run"
        raw = []
        for _ in range(self.plan.raw_repeats):
            exchange = f"bench.{secrets.token_hex(3)}.raw"
            raw.append(
                await amqp.raw_publish_rate(
                    self.connection,
                    exchange,
                    log.sample,
                    n,
                    tasks=6,
                    chunk=batch_size(self.sim_url),
                )
            )
        return result, statistics.median(raw), raw


def _summary(
    mode: str,
    *,
    n: int,
    stats: dict[str, Any],
    usage: procs.Usage,
    wall_s: float,
    detected_at: dict[str, float],
    finals: dict[str, float],
    events: int,
) -> Result:
    latencies = sorted(detected_at[u] - at for u, at in finals.items() if u in detected_at)
    return Result(
        mode=mode,
        n=n,
        ontap_requests=stats["requests"],
        single_requests=stats["single"],
        collection_requests=stats["collection"],
        cpu_s=usage.cpu_s,
        wall_s=wall_s,
        peak_rss_mb=usage.peak_rss_bytes / 2**20,
        p50_s=_quantile(latencies, 0.50),
        p99_s=_quantile(latencies, 0.99),
        max_s=latencies[-1] if latencies else None,
        detected=len(latencies),
        events=events,
    )


def _late_p99(finals: dict[str, float], detected: dict[str, float], started: float) -> float | None:
    """p99 latency of the jobs that ended once the start-up burst was over.

    All N watches arrive within seconds, and each first sight is an event and a checkpoint: the
    first seconds are the busiest of the run. Jobs ending later show the steady state.
    """
    late = [
        detected[u] - at for u, at in finals.items() if u in detected and at >= started + BURST_S
    ]
    return _quantile(sorted(late), 0.99)


def _quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted ``values``."""
    if not values:
        return None
    rank = max(0, min(len(values) - 1, round(q * len(values) + 0.5) - 1))
    return values[rank]


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


async def _wait_for(
    condition: Any, child: procs.Child, timeout_s: float, *, sample: bool = False
) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            child.check_alive()
            if sample:
                child.meter.sample()
            await asyncio.sleep(0.2)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
