"""TLS to ONTAP for real: the simulator serves HTTPS with a certificate from a CA made here
(trustme), and the worker's own client (``build_http_client``) reads a job through it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from structlog.testing import capture_logs

from poller.config import ClusterSettings
from poller.ontap import OntapClient, RetryPolicy, build_http_client
from poller.simulator import Simulator, running_simulator
from poller.tracking import Seen, Unreachable

USER, PASSWORD = "admin", "Tls-test-pw-6a1b"
JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ontap-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def https_sim(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[tuple[Simulator, str]]:
    """A simulated cluster over HTTPS, its certificate (127.0.0.1) signed by ``ca``."""
    sim = Simulator(username=USER, password=PASSWORD)
    sim.create_job(uuid=JOB, timeline=[{"after": 0, "state": "running", "message": "Working"}])
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    async with running_simulator(sim, certfile=cert, keyfile=key) as url:
        yield sim, url


def client(url: str, verify: bool | str) -> OntapClient:
    settings = ClusterSettings(url=url, username=USER, password=PASSWORD, verify=verify)
    return OntapClient("c1", build_http_client(settings), retry=RetryPolicy.instant())


async def test_verify_true_refuses_an_unknown_ca_and_nothing_reaches_ontap(
    https_sim: tuple[Simulator, str],
) -> None:
    """``verify = true`` (the system's CAs) refuses the certificate: no request gets through."""
    sim, url = https_sim
    ontap = client(url, True)
    try:
        seen = await ontap.read([JOB])
    finally:
        await ontap.aclose()
    observation = seen[JOB]
    assert isinstance(observation, Unreachable)
    assert "CERTIFICATE_VERIFY_FAILED" in str(observation.error)
    assert sim.stats.requests == 0


async def test_verify_with_the_ca_file_reads_the_job(
    https_sim: tuple[Simulator, str], ca_file: Path
) -> None:
    """``verify = "<CA file>"`` trusts that CA: the job is read over HTTPS, without warning."""
    sim, url = https_sim
    with capture_logs() as logs:
        ontap = client(url, str(ca_file))
        try:
            seen = await ontap.read([JOB])
        finally:
            await ontap.aclose()
    observation = seen[JOB]
    assert isinstance(observation, Seen)
    assert observation.job.state == "running"
    assert sim.stats.requests == 1
    assert [entry for entry in logs if entry["event"] == "ontap.tls_unverified"] == []


async def test_verify_false_reads_the_job_and_warns_once(
    https_sim: tuple[Simulator, str],
) -> None:
    """``verify = false`` reads the job whatever the certificate, and warns once, not per call."""
    sim, url = https_sim
    with capture_logs() as logs:
        ontap = client(url, False)
        try:
            first = await ontap.read([JOB])
            second = await ontap.read([JOB])
        finally:
            await ontap.aclose()
    assert isinstance(first[JOB], Seen)
    assert isinstance(second[JOB], Seen)
    assert sim.stats.requests == 2
    warnings = [entry for entry in logs if entry["event"] == "ontap.tls_unverified"]
    assert warnings == [{"event": "ontap.tls_unverified", "log_level": "warning", "url": url}]
