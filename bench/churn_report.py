"""The churn benchmark's figures, its markdown lines and its plot (see bench/churn.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import amqp
from bench.plan import latencies, quantile


def figures(
    *,
    series: list[dict[str, Any]],
    creation_s: float,
    window_s: float,
    ends_at: dict[str, float],
    ends: amqp.EventLog,
    started: float,
) -> dict[str, Any]:
    """RSS at the start, after the first purge window and at the end of creation, the slope over
    the second half of it; what was published against what ended."""
    during = [s for s in series if s["t_s"] <= creation_s] or series
    after = [s for s in during if s["t_s"] >= window_s]
    second_half = [s for s in during if s["t_s"] >= creation_s / 2]
    ended = {u for u, at in ends_at.items() if at <= time.time()}
    published = ended & set(ends.final_at)
    seen = latencies({u: ends_at[u] for u in published}, ends.final_at)
    last_s = (ends.last_final_at or started) - started
    return {
        "rss_start_mb": during[0]["rss_mb"] if during else None,
        "rss_after_window_mb": after[0]["rss_mb"] if after else None,
        "rss_after_window_at_s": after[0]["t_s"] if after else None,
        "rss_end_mb": during[-1]["rss_mb"] if during else None,
        "rss_max_mb": max((s["rss_mb"] for s in during), default=None),
        "slope_mb_per_h": slope(second_half, "rss_mb") * 3600 if len(second_half) >= 2 else None,
        #: The slope says something about steady state only once the first window is behind.
        "slope_after_window": creation_s / 2 >= window_s,
        "window_s": window_s,
        "creation_s": creation_s,
        "jobs_created": len(ends_at),
        "jobs_ended": len(ended),
        "jobs_published": len(published),
        "ends_missing": len(ended - published),
        "ends_not_created": len(set(ends.final_at) - set(ends_at)),
        "conflicting_final_ids": ends.conflicting,
        "repeated_ends": ends.repeated,
        "events": ends.count,
        "events_per_s": ends.count / last_s if last_s > 0 else 0.0,
        "ends_per_s": len(ends.final_at) / last_s if last_s > 0 else 0.0,
        "end_p50_s": quantile(seen, 0.5),
        "end_p99_s": quantile(seen, 0.99),
    }


def slope(samples: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of ``key`` against time, per second."""
    xs = [s["t_s"] for s in samples]
    ys = [s[key] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def markdown(data: dict[str, Any]) -> str:
    f, p = data["figures"], data["plan"]
    per_day = float(p["rate"]) * 86400
    window = (
        f"after the first purge window ({f['rss_after_window_at_s']:.0f} s)"
        if f["rss_after_window_at_s"] is not None
        else f"after the first purge window ({f['window_s']:.0f} s): n/a, the run is shorter"
    )
    slope_note = (
        "" if f["slope_after_window"] else " (the second half starts inside the first window)"
    )
    slope_text = "n/a" if f["slope_mb_per_h"] is None else f"{f['slope_mb_per_h']:+.1f} MB/h"
    lines = [
        f"Churn: {float(p['rate']):g} jobs/s ({per_day:,.0f} a day) of {float(p['min_duration']):g} "
        f"to {float(p['max_duration']):g} s for {f['creation_s']:.0f} s, one worker with "
        f"`discover = true` and no watch; the worker forgets an ended job "
        f"{data['worker_purge_window_s']:g} s after it ends, the simulator purges it after "
        f"{float(p['purge_after']):g} s.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| RSS at the start | {_mb(f['rss_start_mb'])} |",
        f"| RSS {window} | {_mb(f['rss_after_window_mb'])} |",
        f"| RSS at the end of creation | {_mb(f['rss_end_mb'])} |",
        f"| RSS slope over the second half{slope_note} | {slope_text} |",
        f"| peak RSS (VmHWM) | {_mb(f['peak_rss_mb'])} |",
        f"| jobs created / ended / published | {f['jobs_created']:,} / {f['jobs_ended']:,} / "
        f"{f['jobs_published']:,} |",
        f"| ends missing / under two ids / delivered again | {f['ends_missing']} / "
        f"{f['conflicting_final_ids']} / {f['repeated_ends']} |",
        f"| events (events/s, ends/s) | {f['events']:,} ({f['events_per_s']:.1f}, "
        f"{f['ends_per_s']:.1f}) |",
        f"| end detection p50 / p99 | {_s(f['end_p50_s'])} / {_s(f['end_p99_s'])} |",
        f"| worker CPU | {f['cpu_s']:.0f} s ({f['cpu_cores']:.3f} cores) |",
        f"| ONTAP calls (records) | {f['ontap_calls']:,} ({f['ontap_records']:,}) |",
    ]
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    series, f = data["series"], data["figures"]
    minutes = [s["t_s"] / 60 for s in series]
    fig, rss = plt.subplots(figsize=(11, 4.2))
    values = [s["rss_mb"] for s in series]
    rss.plot(minutes, values, color="tab:blue", label="worker RSS (MB)")
    # Not from zero: a growth of a few MB, the sign of a leak, must show.
    pad = max(2.0, 0.1 * (max(values) - min(values)))
    rss.set_ylim(min(values) - pad, max(values) + pad)
    rss.set_xlabel("minutes")
    rss.set_ylabel("RSS (MB; the axis does not start at 0)")
    jobs = rss.twinx()
    jobs.plot(minutes, [s["jobs_created"] for s in series], color="tab:grey", linestyle=":", label="jobs created")  # fmt: skip
    jobs.plot(minutes, [s["ends_published"] for s in series], color="tab:green", label="ends published")  # fmt: skip
    jobs.set_ylabel("jobs")
    at = f["window_s"]
    while at < f["creation_s"]:
        rss.axvline(at / 60, color="grey", linestyle="--", linewidth=0.8)
        at += data["worker_purge_window_s"]
    rss.axvline(f["creation_s"] / 60, color="black", linewidth=0.8)
    handles = rss.get_legend_handles_labels()[0] + jobs.get_legend_handles_labels()[0]
    rss.legend(handles=handles, fontsize=8, loc="upper left")
    rss.grid(visible=True, alpha=0.3)
    p = data["plan"]
    fig.suptitle(
        f"One discovering worker under churn: {float(p['rate']):g} jobs/s of "
        f"{float(p['min_duration']):g} to {float(p['max_duration']):g} s (dashed: purge windows "
        f"crossed; solid: creation stops)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
