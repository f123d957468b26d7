"""The benchmark runs end to end at a tiny size: every mode, the table, the capacity run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_the_benchmark_runs_every_mode_at_n_20(amqp_url: str, tmp_path: Path) -> None:
    """20 short jobs per mode: each mode sees every end, and batching reads fewer times."""
    out = tmp_path / "results.json"
    table = tmp_path / "table.md"
    argv = ["--sizes", "20", "--capacity", "50", "--raw-repeats", "1", "--amqp-url", amqp_url]
    argv += ["--min-duration", "0.5", "--max-duration", "1.5", "--grace", "20"]
    argv += ["--poll-interval-min", "0.2", "--poll-interval-max", "0.5", "--peer-interval", "0.5"]
    argv += ["--workdir", str(tmp_path / "work"), "--json", str(out), "--table", str(table)]

    assert run.main([*argv, "--no-plot"]) == 0

    data = json.loads(out.read_text())
    rows = {r["mode"]: r for r in data["results"]}
    assert set(rows) == {"batched", "per-job", "peer"}
    for row in rows.values():
        assert row["detected"] == 20, row
        assert row["p99_s"] is not None and row["cpu_s"] > 0 and row["peak_rss_mb"] > 0
    assert rows["batched"]["conflicting_final_ids"] == 0
    assert rows["batched"]["ontap_requests"] < rows["per-job"]["ontap_requests"]
    assert rows["batched"]["ontap_requests"] < rows["peer"]["ontap_requests"]
    assert data["capacity"]["result"]["detected"] == 50
    assert data["capacity"]["raw_rate"] > 0
    assert "| 20 | worker, batched |" in table.read_text()
