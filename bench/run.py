"""Run the whole benchmark: every mode at every size, side by side, in one invocation.

    python bench/run.py --sizes 100,1000,10000

starts the simulator in a process of its own, then for each size runs the worker batched, the worker
with ``batch = false`` and the netapp_ontap per-job peer, one after the other (each in a fresh process,
measured alone), then the capacity run against the broker's raw confirmed-publish rate. It prints
the table (docs/benchmarks.md), and writes the raw results as JSON and the plot as PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `poller` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika

from bench import procs, report
from bench.modes import Bench, Plan, Result, log

MODES = ("batched", "per-job", "peer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="100,1000,10000", help="numbers of jobs, comma-separated"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="modes to run, comma-separated")
    parser.add_argument("--capacity", type=int, default=None, metavar="N",
                        help="jobs in the capacity run (default: the largest size; 0: skip)")  # fmt: skip
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--min-duration", type=float, default=5.0, metavar="S")
    parser.add_argument("--max-duration", type=float, default=60.0, metavar="S")
    parser.add_argument("--poll-interval-min", type=float, default=1.0, metavar="S")
    parser.add_argument("--poll-interval-max", type=float, default=5.0, metavar="S")
    parser.add_argument("--peer-interval", type=float, default=5.0, metavar="S")
    parser.add_argument("--peer-threads", type=int, default=32)
    parser.add_argument("--grace", type=float, default=90.0, metavar="S",
                        help="how long after the last job ends a mode may still report it")  # fmt: skip
    parser.add_argument("--raw-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--profile", action="store_true",
                        help="record each worker with py-spy (speedscope JSON in the work dir)")  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, default=None, help="logs and configs (default: tmp)"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/latest.json"))
    parser.add_argument("--table", type=Path, default=Path("bench/results/latest.md"))
    parser.add_argument("--plot", type=Path, default=Path("docs/benchmarks.png"))
    parser.add_argument("--no-plot", action="store_true")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, object]:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {sorted(unknown)} (known: {', '.join(MODES)})")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="poller-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = Plan(
        amqp_url=args.amqp_url,
        workdir=workdir,
        min_duration_s=args.min_duration,
        max_duration_s=args.max_duration,
        seed=args.seed,
        poll_interval_min_s=args.poll_interval_min,
        poll_interval_max_s=args.poll_interval_max,
        peer_interval_s=args.peer_interval,
        peer_threads=args.peer_threads,
        grace_s=args.grace,
        raw_repeats=args.raw_repeats,
        profile=args.profile,
    )
    log(f"work directory {workdir}")
    sim, sim_url = procs.start_simulator(workdir)
    results: list[Result] = []
    capacity: dict[str, object] = {}
    started = time.time()
    try:
        connection = await aio_pika.connect(args.amqp_url)
        async with connection:
            bench = Bench(plan, sim, sim_url, connection)
            try:
                for n in sizes:
                    for mode in modes:
                        log(f"{mode} N={n} ...")
                        result = await (
                            bench.run_peer(n) if mode == "peer" else bench.run_worker(mode, n)
                        )
                        log(report.one_line(result))
                        results.append(result)
                capacity_n = max(sizes) if args.capacity is None else args.capacity
                if capacity_n:
                    log(f"capacity N={capacity_n} ...")
                    burst, raw_rate, raw_rates = await bench.run_capacity(capacity_n)
                    capacity = {
                        "result": burst.as_json(),
                        "raw_rate": raw_rate,
                        "raw_rates": raw_rates,
                        "fraction": burst.events_per_s / raw_rate,
                    }
                    log(f"capacity: {burst.events_per_s:.0f} events/s, raw {raw_rate:.0f} msg/s")
            finally:
                await bench.aclose()
    finally:
        sim.stop()
    return {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
        "plan": {k: str(v) for k, v in vars(plan).items() if k != "amqp_url"},
        "elapsed_s": time.time() - started,
        "results": [r.as_json() for r in results],
        "capacity": capacity,
    }


def _cores() -> int:
    import os

    return os.cpu_count() or 0


async def _run_until_sigterm(args: argparse.Namespace) -> dict[str, object]:
    """SIGTERM cancels the run like Ctrl-C does: processes are stopped, queues deleted."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run(args)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = asyncio.run(_run_until_sigterm(args))
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
