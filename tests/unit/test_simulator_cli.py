"""`ontap-job-poller simulate` with the cluster's settings as options, over HTTPS."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
import trustme

SIMULATE = [sys.executable, "-m", "poller", "simulate"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--timezone", "Mars/Olympus"], "--timezone"),
        (["--max-page", "0"], "--max-page"),
        (["--clock-offset", "1e12"], "--clock-offset"),
        (["--user", "s3cret"], "--user"),  # no NAME: part, and the value is not echoed
        (["--user", "admin:other"], "'admin'"),
        (["--tls-key", "key.pem"], "--tls-cert"),
    ],
)
def test_bad_simulate_options_are_configuration_errors(options: list[str], named: str) -> None:
    """A bad option stops `simulate` with exit 78 and one line that names it."""
    result = subprocess.run(
        [*SIMULATE, *options], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 78
    assert named in result.stderr
    assert "s3cret" not in result.stderr


def test_simulate_serves_the_cluster_its_options_describe(tmp_path: Path) -> None:
    """Users, clock offset, zone, refused filters and page cap all hold, served over HTTPS."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = [
        f"--port={port}",
        "--user=w1:pw1",
        "--user=w2:pw2",
        "--clock-offset=-3600",
        "--timezone=America/New_York",
        "--refuse-filters",
        "--max-page=2",
        f"--tls-cert={tmp_path / 'cert.pem'}",
        f"--tls-key={tmp_path / 'key.pem'}",
    ]
    process = subprocess.Popen(
        [*SIMULATE, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"https://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, verify=context, auth=("w2", "pw2"), timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    config = client.get("/_sim/config").json()
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "the simulator did not start within 20 s"
                    time.sleep(0.1)
            client.post("/_sim/jobs", json={"jobs": [{}, {}, {}]})
            page = client.get("/api/cluster/jobs")
            refused = client.get("/api/cluster/jobs", params={"state": "running"})
            as_w1 = client.get("/api/cluster/jobs", auth=("w1", "pw1"))
            stats = client.get("/_sim/stats").json()
    finally:
        process.terminate()
        process.wait(10)
    assert config == {
        "clock_offset_s": -3600.0,
        "timezone": "America/New_York",
        "refuse_filters": True,
        "max_page": 2,
    }
    assert (page.status_code, page.json()["num_records"]) == (200, 2)
    assert "next" in page.json()["_links"]
    assert abs(parsedate_to_datetime(page.headers["Date"]).timestamp() - (time.time() - 3600)) < 30
    assert (refused.status_code, refused.json()["error"]["target"]) == (400, "state")
    assert as_w1.status_code == 200
    assert stats["by_user"]["w2"]["requests"] == 2
