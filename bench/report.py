"""The benchmark's results as a markdown table, the targets, the capacity lines, and a PNG plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench import targets
from bench.plan import Result

MODE_LABELS = {
    "feed": "worker, change feed",
    "batched": "worker, feed = false",
    "per-job": "worker, feed = false, batch = false",
    "peer": "netapp_ontap peer",
}


def one_line(r: Result) -> str:
    return (
        f"{r.mode} N={r.n}: {r.ontap_requests} calls (ends {r.calls_ends}, active "
        f"{r.calls_active}, uuid {r.calls_uuid}, single {r.calls_single}), {r.records} records "
        f"({r.records_per_job:.1f}/job), {r.cpu_s:.1f} CPU s ({r.cpu_cores:.2f} cores), "
        f"{r.peak_rss_mb:.0f} MB, p50 {_num(r.p50_s)} p99 {_num(r.p99_s)} s, "
        f"{r.detected}/{r.n} ends seen, {r.events} events, {r.conflicting_final_ids} ends under "
        f"two ids; CPU s of the simulator {_num(r.extra.get('simulator_cpu_s'), 1)}, of the "
        f"broker {_num(r.extra.get('broker_cpu_s'), 1)}"
    )


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    parts = [
        results_table(data["results"]),
        _peer_lines(data["results"]),
        capacity_lines(data.get("capacity") or {}),
        targets.markdown(data),
    ]
    return "\n\n".join("\n".join(part) for part in parts if part) + "\n"


def results_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    peer = {r["n"]: r for r in rows if r["mode"] == "peer"}
    lines = [
        "| N | mode | ONTAP calls | ends / active / uuid / single | peer ÷ this | records "
        "| records per job | end p50 s | end p99 s | p99 s after burst (jobs) | CPU s "
        "| CPU cores | peak RSS MB | ends seen | events | ends under 2 ids "
        "| broker publishes per job |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = peer[r["n"]]["ontap_requests"] / r["ontap_requests"] if r["n"] in peer else None
        split = f"{r['calls_ends']:,} / {r['calls_active']:,} / {r['calls_uuid']:,} / "
        split += f"{r['calls_single']:,}" + (
            f" (+{r['calls_other']:,})" if r["calls_other"] else ""
        )
        publishes = r["broker_publishes"] / r["n"] if r["broker_publishes"] is not None else None
        lines.append(
            f"| {r['n']:,} | {MODE_LABELS[r['mode']]} | {r['ontap_requests']:,} | {split} | "
            f"{_num(ratio, 1)} | {r['records']:,} | {r['records_per_job']:.1f} | "
            f"{_num(r['p50_s'])} | {_num(r['p99_s'])} | "
            f"{_num(r['p99_late_s'])} ({r['late_jobs']:,}) | {r['cpu_s']:.1f} | "
            f"{r['cpu_cores']:.2f} | {r['peak_rss_mb']:.0f} | {r['detected']:,}/{r['n']:,} | "
            f"{r['events']:,} | {r['conflicting_final_ids']} | {_num(publishes, 1)} |"
        )
    return lines


def _peer_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r["mode"] == "peer" and r["achieved_interval_s"] is not None:
            out.append(
                f"- Peer at N={r['n']:,}: each job was read every {r['achieved_interval_s']:.1f} s "
                f"on average, {r['extra'].get('errors', 0)} failed reads."
            )
    return out


def capacity_lines(c: dict[str, Any]) -> list[str]:
    """The worker's rate beside the relay's, and what the worker does beyond the relay's work."""
    if not c:
        return []
    worker, relay = c["worker"], c["relay"]

    def med(rounds: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    rates = ", ".join(f"{r['events_per_s']:,.0f}" for r in worker)
    relay_rates = ", ".join(f"{r['events_per_s']:,.0f}" for r in relay)
    lines = [
        f"Capacity (N={c['n']:,} finished jobs queued before each starts; median of "
        f"{len(worker)} round{'s' if len(worker) > 1 else ''} each): the worker published **{c['worker_rate']:,.0f} ends/s** "
        f"({rates}); the bare relay, the same AMQP work alone, **{c['relay_rate']:,.0f} ends/s** "
        f"({relay_rates}): **{c['fraction']:.0%}** of it.",
        "",
        "| per job (median) | worker | relay |",
        "|---|---:|---:|",
        f"| broker publishes (events + checkpoints) | {med(worker, 'publishes_per_job'):.2f} "
        f"| {med(relay, 'publishes_per_job'):.2f} |",
        f"| checkpoints | {med(worker, 'checkpoints_per_job'):.2f} | 0 |",
        f"| CPU µs per event | {med(worker, 'cpu_us_per_event'):,.0f} "
        f"| {med(relay, 'cpu_us_per_event'):,.0f} |",
        f"| log lines | {med(worker, 'log_lines_per_job'):.2f} | 0 |",
        f"| ONTAP calls (records) per run | {med(worker, 'ontap_calls'):,.0f} "
        f"({med(worker, 'ontap_records'):,.0f}) | 0 |",
        f"| peak RSS MB | {med(worker, 'peak_rss_mb'):.0f} | {med(relay, 'peak_rss_mb'):.0f} |",
    ]
    broker = [r["broker_cpu_s"] for r in worker + relay if r["broker_cpu_s"] is not None]
    if broker:
        lines.append(
            f"| broker CPU s per run | {med(worker, 'broker_cpu_s'):.1f} "
            f"| {med(relay, 'broker_cpu_s'):.1f} |"
        )
    return lines


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    rows = data["results"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    calls, records, p99 = axes
    for mode, label in MODE_LABELS.items():
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["n"])
        if not mine:
            continue
        sizes = [r["n"] for r in mine]
        calls.plot(sizes, [r["ontap_requests"] for r in mine], marker="o", label=label)
        records.plot(sizes, [r["records_per_job"] for r in mine], marker="o", label=label)
        seen = [(r["n"], r["p99_s"]) for r in mine if r["p99_s"] is not None]
        p99.plot([x for x, _ in seen], [y for _, y in seen], marker="o", label=label)
    p99.axhline(targets.END_P99_S, color="grey", linestyle="--", linewidth=1, label="target")
    calls.set_yscale("log")
    records.set_ylim(bottom=0)
    p99.set_ylim(bottom=0)
    titles = ("ONTAP calls per run", "job records served per job", "end detection p99 (s)")
    sizes = sorted({r["n"] for r in rows})
    for axis, title in zip(axes, titles, strict=True):
        axis.set_xscale("log")
        axis.set_xticks(sizes, [f"{n:,}" for n in sizes])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xlabel("jobs watched (N)")
        axis.set_title(title)
        axis.grid(visible=True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    p = data["plan"]
    fig.suptitle(
        f"ontap-job-poller: change feed, uuid batches and per-job polling (jobs of "
        f"{float(p['min_duration_s']):g} to {float(p['max_duration_s']):g} s, polls "
        f"{float(p['poll_interval_min_s']):g} to {float(p['poll_interval_max_s']):g} s, "
        f"cluster clock {float(p['cluster_clock_offset_s']):+g} s)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
