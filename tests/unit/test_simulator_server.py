"""The simulator on a real socket: HTTP and HTTPS, dropped connections, the Date header, ports."""

from __future__ import annotations

import json
import socket
import ssl
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
import trustme

from poller.simulator import FaultPlan, Simulator, running_simulator
from poller.simulator.testing import DEFAULT_AUTH

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
JOB_PATH = f"/api/cluster/jobs/{JOB}"


async def test_real_server_answers_over_http() -> None:
    """running_simulator serves on an ephemeral port and answers a real HTTP GET."""
    sim = Simulator()
    sim.create_job(uuid=JOB)
    async with (
        running_simulator(sim) as url,
        httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH) as client,
    ):
        assert url.startswith("http://127.0.0.1:")
        response = await client.get(JOB_PATH)
    assert (response.status_code, response.json()["state"]) == (200, "queued")


async def test_real_server_drops_connections_and_keeps_serving() -> None:
    """A drop fault closes the socket with no answer; the next request is served normally."""
    sim = Simulator(faults=FaultPlan(drop_rate=1.0))
    async with (
        running_simulator(sim) as url,
        httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await client.get(JOB_PATH)
        sim.faults = FaultPlan()
        assert (await client.get(JOB_PATH)).status_code == 404
    assert sim.stats.by_status == {"dropped": 1, "404": 1}


async def test_serve_raises_when_the_port_is_taken() -> None:
    """A port already in use is an OSError, not an exit of the process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="could not listen"):
            async with running_simulator(Simulator(), port=taken.getsockname()[1]):
                pass


async def test_real_server_sends_malformed_answers_whole() -> None:
    """Over HTTP a malformed answer arrives complete, as a 200 that is not JSON; the next is fine."""
    sim = Simulator(faults=FaultPlan(malformed_rate=1.0))
    sim.create_job(uuid=JOB)
    async with (
        running_simulator(sim) as url,
        httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH) as client,
    ):
        malformed = await client.get(JOB_PATH)
        sim.faults = FaultPlan()
        good = await client.get(JOB_PATH)
    assert (malformed.status_code, malformed.headers["content-type"]) == (200, "application/json")
    assert malformed.content == good.content[: len(good.content) // 2]
    assert int(malformed.headers["content-length"]) == len(malformed.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed.content)
    assert sim.stats.by_status == {"malformed": 1, "200": 1}


@pytest.mark.parametrize("offset_s", [-3600.0, 0.0, 5400.0])
async def test_real_server_sends_one_date_header_the_clusters(offset_s: float) -> None:
    """Over HTTP the only Date header is the cluster's clock, not the server's own."""
    sim = Simulator(clock_offset_s=offset_s)
    async with (
        running_simulator(sim) as url,
        httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH) as client,
    ):
        response = await client.get(JOB_PATH)
    dates = response.headers.get_list("date")
    assert len(dates) == 1
    assert abs(parsedate_to_datetime(dates[0]).timestamp() - (time.time() + offset_s)) < 5


# --- HTTPS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_certificate(ca: trustme.CA, directory: Path, *, key_apart: bool) -> dict[str, Path]:
    """The certfile (and keyfile) arguments for a certificate of 127.0.0.1 signed by `ca`."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    if not key_apart:
        issued.private_key_and_cert_chain_pem.write_to_path(str(directory / "both.pem"))
        return {"certfile": directory / "both.pem"}
    issued.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    issued.private_key_pem.write_to_path(str(directory / "key.pem"))
    return {"certfile": directory / "cert.pem", "keyfile": directory / "key.pem"}


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("key_apart", [True, False], ids=["key-file", "key-in-cert-file"])
async def test_https_is_served_with_the_given_certificate(
    ca: trustme.CA, tmp_path: Path, key_apart: bool
) -> None:
    """With a certificate the simulator speaks HTTPS, and a client trusting its CA verifies it."""
    sim = Simulator()
    sim.create_job(uuid=JOB)
    files = write_certificate(ca, tmp_path, key_apart=key_apart)
    async with (
        running_simulator(sim, **files) as url,
        httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH, verify=trusting(ca)) as client,
    ):
        assert url.startswith("https://127.0.0.1:")
        response = await client.get(JOB_PATH)
    assert (response.status_code, response.json()["uuid"]) == (200, JOB)


async def test_https_is_refused_by_a_client_without_the_ca(ca: trustme.CA, tmp_path: Path) -> None:
    """A client that does not trust the CA fails verification: the TLS is real."""
    files = write_certificate(ca, tmp_path, key_apart=True)
    async with (
        running_simulator(Simulator(), **files) as url,
        httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH) as client,
    ):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(JOB_PATH)


async def test_https_drops_connections_too(ca: trustme.CA, tmp_path: Path) -> None:
    """A drop fault cuts a TLS connection as it cuts a plain one."""
    sim = Simulator(faults=FaultPlan(drop_rate=1.0))
    files = write_certificate(ca, tmp_path, key_apart=True)
    async with (
        running_simulator(sim, **files) as url,
        httpx.AsyncClient(base_url=url, auth=DEFAULT_AUTH, verify=trusting(ca)) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(JOB_PATH)
    assert sim.stats.by_status == {"dropped": 1}


async def test_a_key_without_its_certificate_is_refused(tmp_path: Path) -> None:
    """A keyfile alone is a mistake, said at once rather than served as plain HTTP."""
    with pytest.raises(ValueError, match="certfile"):
        async with running_simulator(Simulator(), keyfile=tmp_path / "key.pem"):
            pass


async def test_an_unreadable_certificate_is_named(tmp_path: Path) -> None:
    """A certificate that cannot be loaded is an OSError naming the file."""
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    for name in ("missing.pem", "garbage.pem"):
        with pytest.raises(OSError, match=name):
            async with running_simulator(Simulator(), certfile=tmp_path / name):
                pass
