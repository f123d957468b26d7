"""The benchmark's results as a markdown table, a check of the targets, and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.modes import Result

MODE_LABELS = {
    "batched": "worker, batched",
    "per-job": "worker, batch = false",
    "peer": "netapp_ontap peer",
}


def one_line(r: Result) -> str:
    sim_s = r.extra.get("simulator_cpu_s")
    return (
        f"{r.mode} N={r.n}: {r.ontap_requests} requests, {r.cpu_s:.1f} CPU s "
        f"({r.cpu_cores:.2f} cores), {r.peak_rss_mb:.0f} MB, p50 {_s(r.p50_s)} p99 {_s(r.p99_s)}, "
        f"{r.detected}/{r.n} detected, {r.events} events; CPU s of the simulator "
        f"{_num(sim_s, 1)}, of the broker {_num(r.extra.get('broker_cpu_s'), 1)}"
    )


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    rows = data["results"]
    peer = {r["n"]: r for r in rows if r["mode"] == "peer"}
    lines = [
        "| N | mode | ONTAP requests | peer ÷ this | worker CPU s | CPU cores (avg) "
        "| peak RSS MB | latency p50 s | latency p99 s | p99 s after 20 s | detected | events "
        "| events/s | broker publishes per job |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = peer[r["n"]]["ontap_requests"] / r["ontap_requests"] if r["n"] in peer else None
        publishes = r["broker_publishes"] / r["n"] if r["broker_publishes"] is not None else None
        lines.append(
            f"| {r['n']:,} | {MODE_LABELS[r['mode']]} | {r['ontap_requests']:,} | "
            f"{_num(ratio, 1)} | {r['cpu_s']:.1f} | {r['cpu_cores']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{_num(r['p50_s'])} | {_num(r['p99_s'])} | {_num(r['extra'].get('p99_after_burst_s'))} | "
            f"{r['detected']:,}/{r['n']:,} | "
            f"{r['events']:,} | {r['events_per_s']:,.0f} | {_num(publishes, 1)} |"
        )
    lines += ["", *_peer_lines(rows), *_capacity_lines(data), "", *targets(data)]
    return "\n".join(lines) + "\n"


def _peer_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r["mode"] == "peer" and r["achieved_interval_s"] is not None:
            out.append(
                f"- Peer at N={r['n']:,}: each job was read every {r['achieved_interval_s']:.1f} s "
                f"on average (aiming at 5 s), {r['extra'].get('errors', 0)} failed reads."
            )
    return out


def _capacity_lines(data: dict[str, Any]) -> list[str]:
    c = data.get("capacity")
    if not c:
        return []
    r = c["result"]
    rates = ", ".join(f"{x:,.0f}" for x in c["raw_rates"])
    return [
        "",
        f"Capacity (N={r['n']:,} finished jobs queued before the worker starts): the worker "
        f"published {r['detected']:,} final events at **{r['events_per_s']:,.0f} events/s**; the "
        f"broker's raw confirmed, persistent publishing of the same messages reached "
        f"**{c['raw_rate']:,.0f} msg/s** (median of {rates}): **{c['fraction']:.0%}** of it. "
        f"Worker CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
        f"{r['ontap_requests']:,} ONTAP requests.",
    ]


def targets(data: dict[str, Any]) -> list[str]:
    """The issue's targets at the largest N, each with its measured value and verdict."""
    rows = data["results"]
    if not rows:
        return []
    n = max(r["n"] for r in rows)
    by_mode = {r["mode"]: r for r in rows if r["n"] == n}
    batched, peer = by_mode.get("batched"), by_mode.get("peer")
    if batched is None:
        return []
    cap = float(data["plan"]["poll_interval_max_s"])
    checks: list[tuple[str, str, bool]] = []
    if peer is not None:
        ratio = peer["ontap_requests"] / max(1, batched["ontap_requests"])
        checks.append(("≥ 50x fewer ONTAP requests than the peer", f"{ratio:.0f}x", ratio >= 50))
    p99 = batched["p99_s"]
    checks.append((f"p99 latency ≤ {cap + 0.5:g} s", _s(p99), p99 is not None and p99 <= cap + 0.5))
    late = batched["extra"].get("p99_after_burst_s")
    target = f"p99 latency ≤ {cap + 0.5:g} s, jobs ending after the first 20 s"
    checks.append((target, _s(late), late is not None and late <= cap + 0.5))
    cores = batched["cpu_cores"]
    checks.append(("worker CPU ≤ 0.5 core on average", f"{cores:.2f} cores", cores <= 0.5))
    rss = batched["peak_rss_mb"]
    checks.append(("peak RSS ≤ 300 MB", f"{rss:.0f} MB", rss <= 300))
    if data.get("capacity"):
        fraction = data["capacity"]["fraction"]
        checks.append(("event rate ≥ 70% of raw publishing", f"{fraction:.0%}", fraction >= 0.7))
    lines = [f"Targets at N={n:,} (worker, batched):", "", "| target | measured | met |"]
    lines.append("|---|---:|:---:|")
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in checks]
    return lines


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["results"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, label in MODE_LABELS.items():
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["n"])
        if not mine:
            continue
        sizes = [r["n"] for r in mine]
        left.plot(sizes, [r["ontap_requests"] for r in mine], marker="o", label=label)
        p99 = [(r["n"], r["p99_s"]) for r in mine if r["p99_s"] is not None]
        right.plot([x for x, _ in p99], [y for _, y in p99], marker="o", label=label)
    cap = float(data["plan"]["poll_interval_max_s"])
    right.axhline(cap + 0.5, color="grey", linestyle="--", linewidth=1, label="target p99")
    left.set_yscale("log")
    right.set_ylim(bottom=0)
    for axis, title in ((left, "ONTAP requests per run"), (right, "detection latency p99 (s)")):
        axis.set_xscale("log")
        axis.set_xlabel("jobs watched at once (N)")
        axis.set_title(title)
        axis.grid(visible=True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    p = data["plan"]
    fig.suptitle(
        f"ontap-job-poller against per-job polling (jobs of {float(p['min_duration_s']):g} to "
        f"{float(p['max_duration_s']):g} s, poll cap {cap:g} s)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
