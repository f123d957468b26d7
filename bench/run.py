"""Run the whole benchmark: every mode at every size, side by side, in one invocation.

    python bench/run.py

starts the simulator in a process of its own (its clock 7 minutes behind the worker's), then for
each size (2,000, 8,000 and 20,000 jobs of 5 to 20 s) runs the worker with the change feed, the
same worker with ``feed = false`` and, at 2,000 jobs, the netapp_ontap per-job peer, one after the
other (each in a fresh process, measured alone, on jobs of its own), then the capacity run against
a bare relay. It prints the table and the targets (docs/benchmarks.md), and writes the raw results
as JSON and the plot as PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `poller` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika

from bench import procs, report
from bench.capacity import run_capacity
from bench.modes import MODES, Bench
from bench.plan import CLUSTER_CLOCK_OFFSET_S, Plan, Result, log

DEFAULT_MODES = ("feed", "batched", "peer")


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--sizes", type=_sizes, default=[2000, 8000, 20000], help="numbers of jobs, comma-separated")  # fmt: skip
    add("--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated, of {', '.join(MODES)}")  # fmt: skip
    add("--peer-sizes", type=_sizes, default=[2000], help="the sizes (of --sizes) the peer runs at")  # fmt: skip
    add("--capacity", type=int, default=None, metavar="N",
        help="jobs in the capacity run (default: the largest size; 0: skip)")  # fmt: skip
    add("--capacity-repeats", type=int, default=3, help="rounds of the worker and of the relay")
    add("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    add("--min-duration", type=float, default=5.0, metavar="S")
    add("--max-duration", type=float, default=20.0, metavar="S")
    add("--poll-interval-min", type=float, default=1.0, metavar="S")
    add("--poll-interval-max", type=float, default=5.0, metavar="S")
    add("--cluster-clock-offset", type=float, default=CLUSTER_CLOCK_OFFSET_S, metavar="S",
        help="the cluster's clock runs S s ahead of the worker's (default -420: 7 min behind)")  # fmt: skip
    add("--peer-interval", type=float, default=5.0, metavar="S",
        help="the peer's poll interval (netapp_ontap's default: 5 s)")  # fmt: skip
    add("--peer-threads", type=int, default=32)
    add("--grace", type=float, default=90.0, metavar="S",
        help="how long after the last job ends a mode may still report it")  # fmt: skip
    add("--burst", type=float, default=10.0, metavar="S",
        help="jobs ending this long after the requests count as past the start-up burst")  # fmt: skip
    add("--seed", type=int, default=20240611)
    add("--profile", action="store_true",
        help="record each worker with py-spy (speedscope JSON in the work dir)")  # fmt: skip
    add("--workdir", type=Path, default=None, help="logs and configs (default: tmp)")
    add("--json", type=Path, default=Path("bench/results/latest.json"))
    add("--table", type=Path, default=Path("bench/results/latest.md"))
    add("--plot", type=Path, default=Path("docs/benchmarks.png"))
    add("--no-plot", action="store_true")
    return parser.parse_args(argv)


def plan_of(args: argparse.Namespace, workdir: Path) -> Plan:
    return Plan(
        amqp_url=args.amqp_url,
        workdir=workdir,
        min_duration_s=args.min_duration,
        max_duration_s=args.max_duration,
        seed=args.seed,
        poll_interval_min_s=args.poll_interval_min,
        poll_interval_max_s=args.poll_interval_max,
        cluster_clock_offset_s=args.cluster_clock_offset,
        peer_interval_s=args.peer_interval,
        peer_threads=args.peer_threads,
        grace_s=args.grace,
        burst_s=args.burst,
        capacity_repeats=args.capacity_repeats,
        profile=args.profile,
    )


def capacity_of(args: argparse.Namespace) -> int:
    """Jobs in the capacity run: ``--capacity``, else the largest size."""
    if args.capacity is not None:
        return int(args.capacity)
    if not args.sizes:
        raise SystemExit("--sizes '' runs no mode: give --capacity N for the capacity run alone")
    return max(args.sizes)


def runs_of(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(mode, N) in the order they run: size by size, the peer only at its sizes."""
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {sorted(unknown)} (known: {', '.join(MODES)})")
    if "peer" in modes and args.sizes and not set(args.peer_sizes) & set(args.sizes):
        log(f"the peer runs at none of the sizes: --peer-sizes {args.peer_sizes} not in --sizes")
    return [
        (mode, n) for n in args.sizes for mode in modes if mode != "peer" or n in args.peer_sizes
    ]


async def run(args: argparse.Namespace) -> dict[str, object]:
    runs, capacity_n = runs_of(args), capacity_of(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="poller-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = plan_of(args, workdir)
    log(f"work directory {workdir}")
    sim, sim_url = procs.start_simulator(workdir, clock_offset_s=plan.cluster_clock_offset_s)
    results: list[Result] = []
    capacity: dict[str, object] = {}
    started = time.time()
    try:
        connection = await aio_pika.connect(args.amqp_url)
        async with connection:
            bench = Bench(plan, sim, sim_url, connection)
            try:
                for mode, n in runs:
                    log(f"{mode} N={n} ...")
                    result = await (
                        bench.run_peer(n) if mode == "peer" else bench.run_worker(mode, n)
                    )
                    log(report.one_line(result))
                    results.append(result)
                if capacity_n:
                    log(f"capacity N={capacity_n} ...")
                    capacity = await run_capacity(bench, capacity_n)
            finally:
                await bench.aclose()
    finally:
        sim.stop()
    return {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "plan": {k: str(v) for k, v in vars(plan).items() if k != "amqp_url"},
        "elapsed_s": time.time() - started,
        "results": [r.as_json() for r in results],
        "capacity": capacity,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = asyncio.run(procs.until_sigterm(run(args)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1))
    table = report.markdown(data)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(table)
    if not args.no_plot:
        report.plot(data, args.plot)
    print(table)
    log(f"done in {data['elapsed_s']:.0f} s; results in {args.json}, table in {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
