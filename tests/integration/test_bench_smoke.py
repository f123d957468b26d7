"""The benchmark runs end to end at tiny sizes: every mode, the table, the targets, the capacity run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import run

pytestmark = pytest.mark.integration

#: Short jobs and short polls, so that a mode takes seconds.
QUICK = ["--min-duration", "0.5", "--max-duration", "3", "--grace", "20", "--burst", "1"]
QUICK += ["--poll-interval-min", "0.2", "--poll-interval-max", "1.0", "--peer-interval", "0.5"]


def run_bench(tmp_path: Path, amqp_url: str, *argv: str) -> tuple[dict[str, Any], str]:
    out, table = tmp_path / "results.json", tmp_path / "table.md"
    paths = ["--workdir", str(tmp_path / "work"), "--json", str(out), "--table", str(table)]
    assert run.main([*argv, *QUICK, "--amqp-url", amqp_url, *paths, "--no-plot"]) == 0
    return json.loads(out.read_text()), table.read_text()


@pytest.mark.timeout(180)
def test_every_mode_sees_every_end_at_n_40(amqp_url: str, tmp_path: Path) -> None:
    """40 jobs per mode: each mode sees every end under one id; capacity and targets render."""
    data, table = run_bench(
        tmp_path,
        amqp_url,
        *["--sizes", "40", "--modes", "feed,batched,per-job,peer", "--peer-sizes", "40"],
        *["--capacity", "50", "--capacity-repeats", "1"],
    )

    rows = {r["mode"]: r for r in data["results"]}
    assert set(rows) == {"feed", "batched", "per-job", "peer"}
    for row in rows.values():
        assert row["detected"] == 40, row
        assert row["conflicting_final_ids"] == 0, row
        assert row["p99_s"] is not None and row["cpu_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["ontap_requests"] > 0 and row["records"] > 0
    assert rows["feed"]["calls_ends"] > 0 and rows["batched"]["calls_ends"] == 0
    capacity = data["capacity"]
    assert [r["ends"] for r in capacity["worker"] + capacity["relay"]] == [50, 50]
    assert capacity["relay_rate"] > 0 and capacity["fraction"] > 0
    assert "| 40 | worker, change feed |" in table
    assert "| end p99 ≤ 2 s at N=40 |" in table
    assert "| event rate ≥ 70% of the bare relay's |" in table


@pytest.mark.timeout(180)
def test_the_feed_makes_fewer_calls_than_uuid_batches_at_n_300(
    amqp_url: str, tmp_path: Path
) -> None:
    """300 jobs (three uuid batches a read): the feed reads the cluster in fewer calls."""
    data, table = run_bench(
        tmp_path, amqp_url, "--sizes", "300", "--modes", "feed,batched", "--capacity", "0"
    )

    rows = {r["mode"]: r for r in data["results"]}
    for row in rows.values():
        assert row["detected"] == 300 and row["conflicting_final_ids"] == 0, row
    assert rows["feed"]["ontap_requests"] < rows["batched"]["ontap_requests"]
    assert "| job records per job at N=300 ≤ batched's |" in table
