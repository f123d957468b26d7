"""The issue's targets, each checked against the figures of one run.

The targets name sizes (2,000 and 8,000 jobs). A run at other sizes (the smoke test's, a quick
check) is checked at the nearest sizes it has, and each row says which N it read, so a table never
claims a size that was not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The worker as the issue measures it: configured by default, with the change feed.
WORKER = "feed"
BASELINE = "batched"
CALLS_GROWTH = 1.5
PEER_FACTOR = 100
END_P99_S = 2.0
CPU_CORES = 0.5
RSS_MB = 300.0
RELAY_FRACTION = 0.7


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    met: bool
    #: How far from the target, when missed: "+23%" over a limit, "-12 points" under a floor.
    missed_by: str = ""


def checks(data: dict[str, Any]) -> list[Check]:
    """Every target the run has the figures for, in the issue's order."""
    rows = data["results"]
    mine = {r["n"]: r for r in rows if r["mode"] == WORKER}
    if not mine:
        return []
    out = [*_growth(mine), *_peer(mine, rows)]
    out += [
        _at_most(f"end p99 ≤ {END_P99_S:g} s at N={n:,}", r["p99_s"], END_P99_S, "s")
        for n, r in sorted(mine.items())
    ]
    out += _records(mine, rows)
    n = _pick(sorted(mine), 8000, last=True)
    out.append(
        _at_most(
            f"worker CPU ≤ {CPU_CORES:g} core at N={n:,}", mine[n]["cpu_cores"], CPU_CORES, " cores"
        )
    )
    n = max(mine, key=lambda k: mine[k]["peak_rss_mb"])
    out.append(
        _at_most(
            f"peak RSS ≤ {RSS_MB:g} MB (largest: N={n:,})",
            mine[n]["peak_rss_mb"],
            RSS_MB,
            " MB",
            digits=0,
        )
    )
    capacity = data.get("capacity")
    if capacity:
        out.append(_share(capacity["fraction"]))
    return out


def markdown(data: dict[str, Any]) -> list[str]:
    rows = checks(data)
    if not rows:
        return []
    lines = ["Targets:", "", "| target | measured | met | missed by |", "|---|---:|:---:|---:|"]
    for c in rows:
        lines.append(
            f"| {c.target} | {c.measured} | {'yes' if c.met else '**no**'} | {c.missed_by} |"
        )
    return lines


def _growth(mine: dict[int, dict[str, Any]]) -> list[Check]:
    sizes = sorted(mine)
    if len(sizes) < 2:
        return []
    lo = _pick(sizes, 2000)
    hi = _pick([n for n in sizes if n > lo], 8000) if any(n > lo for n in sizes) else None
    if hi is None:
        return []
    ratio = mine[hi]["ontap_requests"] / max(1, mine[lo]["ontap_requests"])
    target = f"ONTAP calls at N={hi:,} ≤ {CALLS_GROWTH:g} x calls at N={lo:,}"
    measured = f"{mine[hi]['ontap_requests']:,} vs {mine[lo]['ontap_requests']:,} ({ratio:.2f}x)"
    return [Check(target, measured, ratio <= CALLS_GROWTH, _over(ratio, CALLS_GROWTH))]


def _peer(mine: dict[int, dict[str, Any]], rows: list[dict[str, Any]]) -> list[Check]:
    peers = {r["n"]: r for r in rows if r["mode"] == "peer" and r["n"] in mine}
    if not peers:
        return []
    n = _pick(sorted(peers), 2000)
    calls, peer_calls = mine[n]["ontap_requests"], peers[n]["ontap_requests"]
    limit = peer_calls / PEER_FACTOR
    target = f"ONTAP calls at N={n:,} ≤ 1/{PEER_FACTOR} of the peer's"
    measured = f"{calls:,} vs {peer_calls:,} (1/{peer_calls / max(1, calls):.0f})"
    return [Check(target, measured, calls <= limit, _over(calls, limit))]


def _records(mine: dict[int, dict[str, Any]], rows: list[dict[str, Any]]) -> list[Check]:
    out = []
    for r in rows:
        if r["mode"] == BASELINE and r["n"] in mine:
            n, base = r["n"], r["records_per_job"]
            ours = mine[n]["records_per_job"]
            target = f"job records per job at N={n:,} ≤ batched's"
            measured = f"{ours:.1f} vs {base:.1f}"
            out.append(Check(target, measured, ours <= base, _over(ours, base)))
    return out


def _share(fraction: float) -> Check:
    target = f"event rate ≥ {RELAY_FRACTION:.0%} of the bare relay's"
    missed = "" if fraction >= RELAY_FRACTION else f"{100 * (fraction - RELAY_FRACTION):.0f} points"
    return Check(target, f"{fraction:.0%}", fraction >= RELAY_FRACTION, missed)


def _at_most(target: str, value: float | None, limit: float, unit: str, digits: int = 2) -> Check:
    if value is None:
        return Check(target, "n/a", met=False, missed_by="no figure")
    return Check(target, f"{value:.{digits}f}{unit}", value <= limit, _over(value, limit))


def _over(value: float, limit: float) -> str:
    if value <= limit:
        return ""
    return f"+{100 * (value / limit - 1):.0f}%" if limit > 0 else "over"


def _pick(sizes: list[int], wanted: int, *, last: bool = False) -> int:
    """``wanted`` when it was run; otherwise the smallest size (or the largest, ``last``)."""
    if wanted in sizes:
        return wanted
    return sizes[-1] if last else sizes[0]
