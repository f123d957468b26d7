"""The churn benchmark runs end to end for 20 s at a tiny rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import churn

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_the_churn_benchmark_publishes_every_end_once(amqp_url: str, tmp_path: Path) -> None:
    """2 jobs/s for 20 s: RSS figures present, every job that ended published under one id."""
    out, table = tmp_path / "churn.json", tmp_path / "churn.md"
    argv = ["--rate", "2", "--duration", "20", "--min-duration", "0.5", "--max-duration", "2"]
    argv += ["--poll-interval-min", "0.2", "--poll-interval-max", "0.5", "--sample-every", "1"]
    argv += ["--amqp-url", amqp_url, "--workdir", str(tmp_path / "work")]
    argv += ["--json", str(out), "--table", str(table), "--no-plot"]

    assert churn.main(argv) == 0

    data = json.loads(out.read_text())
    f = data["figures"]
    assert f["rss_start_mb"] > 0 and f["rss_end_mb"] > 0 and f["slope_mb_per_h"] is not None
    assert "rss_after_window_mb" in f  # n/a here: 20 s is shorter than the purge window
    assert len(data["series"]) >= 15
    assert f["jobs_created"] >= 35 and f["jobs_ended"] == f["jobs_created"]
    assert f["jobs_published"] == f["jobs_ended"] and f["ends_missing"] == 0
    assert f["conflicting_final_ids"] == 0 and f["ends_not_created"] == 0
    assert f["events_per_s"] > 0
    assert "| RSS at the end of creation |" in table.read_text()
