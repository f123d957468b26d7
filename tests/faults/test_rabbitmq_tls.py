"""TLS to RabbitMQ, and the broker password: a private node with a TLS listener and certificates
made here (trustme); ``amqp_password_file``; no password in an error, a log line or the output."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from poller.amqp import BrokerTarget, connect
from poller.errors import BrokerError
from tests.faults.conftest import until
from tests.faults.private_broker import BrokerUnavailable, PrivateBroker, free_port
from tests.faults.tcp_proxy import TcpProxy
from tests.faults.worker_process import REPO, WorkerProcess

pytestmark = pytest.mark.faults

USER = "poller"
#: Distinctive, so that any leak is found by a plain search.
SECRET = "Zq7-secret-AMQP-pw-5d2c"
WRONG = "Zq7-wrong-AMQP-pw-80f1"
CLIENT_CN = "poller-client.example.com"


@dataclass(frozen=True)
class TlsNode:
    node: PrivateBroker
    tls_port: int
    ca: Path  # the CA that signed the node's certificate
    other_ca: Path  # a CA the node has never heard of
    client_cert: Path
    client_key: Path

    def url(self, host: str = "localhost", port: int | None = None, password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"amqps://{USER}{secret}@{host}:{port or self.tls_port}/"

    def connections(self) -> list[dict[str, object]]:
        """The node's client connections: their name, TLS or not, the client's certificate."""
        text = self.node.rabbitmqctl(
            "list_connections",
            "client_properties",
            "ssl",
            "peer_cert_subject",
            "--formatter",
            "json",
        )
        return list(json.loads(text))

    def connection(self, name: str) -> dict[str, object]:
        """The one connection named ``name`` by its client (``connect(..., name=...)``)."""
        found = [c for c in self.connections() if name in json.dumps(c["client_properties"])]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    """A private node with a TLS listener that asks for (but does not require) a client
    certificate, and a user whose password is ``SECRET``."""
    root = tmp_path_factory.mktemp("rabbitmq-tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert(CLIENT_CN, common_name=CLIENT_CN)
    files = {
        name: root / f"{name}.pem" for name in ("ca", "other", "server", "key", "cert", "ckey")
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    other.cert_pem.write_to_path(str(files["other"]))
    server.cert_chain_pems[0].write_to_path(str(files["server"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["ckey"]))
    tls_port = free_port()
    node = None
    try:
        node = PrivateBroker(
            root / "node",
            extra_config=[
                f"listeners.ssl.default = 127.0.0.1:{tls_port}",
                f"ssl_options.cacertfile = {files['ca']}",
                f"ssl_options.certfile = {files['server']}",
                f"ssl_options.keyfile = {files['key']}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ],
        )
        node.start()
        node.rabbitmqctl("add_user", USER, SECRET)
        node.rabbitmqctl("set_permissions", "-p", "/", USER, ".*", ".*", ".*")
    except BrokerUnavailable as exc:
        if node is not None:
            node.close()
        pytest.fail(str(exc), pytrace=False)  # never a skip: a missing broker is a failure
    yield TlsNode(node, tls_port, files["ca"], files["other"], files["cert"], files["ckey"])
    node.close()


def secret_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "amqp-password"
    path.write_text(password + "\n", encoding="utf-8")  # as Docker secrets are written
    return path


async def test_amqps_with_the_ca_bundle_and_a_password_file(tls_node: TlsNode, tmp_path) -> None:
    """``amqps://`` verified with ``amqp_ca_file``, the password from ``amqp_password_file``:
    connected over TLS, without a client certificate."""
    target = BrokerTarget(
        urls=(tls_node.url(),), ca_file=tls_node.ca, password_file=secret_file(tmp_path, SECRET)
    )
    connection = await connect(target, name="tls without client cert")
    async with connection:
        seen = await asyncio.to_thread(tls_node.connection, "tls without client cert")
    assert seen["ssl"] is True
    assert not seen["peer_cert_subject"]


async def test_amqps_presents_the_client_certificate(tls_node: TlsNode, tmp_path) -> None:
    """With ``amqp_cert_file`` and ``amqp_key_file`` the node sees the client's certificate."""
    target = BrokerTarget(
        urls=(tls_node.url(password=SECRET),),
        ca_file=tls_node.ca,
        cert_file=tls_node.client_cert,
        key_file=tls_node.client_key,
    )
    connection = await connect(target, name="tls with client cert")
    async with connection:
        seen = await asyncio.to_thread(tls_node.connection, "tls with client cert")
    assert seen["ssl"] is True
    assert CLIENT_CN in str(seen["peer_cert_subject"])


async def test_a_certificate_from_another_ca_is_refused_clearly(tls_node: TlsNode) -> None:
    """Verified against a CA that did not sign the node's certificate: ``BrokerError`` says the
    certificate is not trusted and points at ``amqp_ca_file``, without the password."""
    target = BrokerTarget(urls=(tls_node.url(password=SECRET),), ca_file=tls_node.other_ca)
    with pytest.raises(BrokerError) as caught:
        await connect(target, name="tls wrong ca")
    text = str(caught.value)
    assert text.startswith("cannot connect to RabbitMQ: amqps://localhost:")
    assert "TLS: the broker's certificate is not trusted" in text
    assert "amqp_ca_file" in text
    assert SECRET not in text


async def test_a_wrong_password_is_refused_without_showing_it(tls_node: TlsNode, tmp_path) -> None:
    """A refused login names every node tried, and neither the URL's nor the file's password."""
    unreachable = f"amqps://{USER}:{SECRET}@localhost:{free_port()}/"
    target = BrokerTarget(
        urls=(unreachable, tls_node.url(password=SECRET)),
        ca_file=tls_node.ca,
        password_file=secret_file(tmp_path, WRONG),
    )
    with pytest.raises(BrokerError) as caught:
        await connect(target, name="tls wrong password")
    text = str(caught.value)
    assert f"localhost:{tls_node.tls_port}/" in text
    assert "ACCESS_REFUSED" in text
    assert SECRET not in text
    assert WRONG not in text


async def test_cli_error_holds_no_password(tls_node: TlsNode, tmp_path) -> None:
    """``watch`` with a refused password in ``amqp_url`` exits 3 saying why, without it."""
    env = {
        "POLLER_AMQP_URL": f"{tls_node.url(password=WRONG)},{tls_node.url(password=WRONG, port=free_port())}",
        "POLLER_AMQP_CA_FILE": str(tls_node.ca),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "poller",
        "watch",
        "1cd8a442-86d1-11e0-ae1c-123478563412",
        cwd=REPO,
        env={**_clean_env(), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    text = (out + err).decode()
    assert process.returncode == 3, text
    assert "ACCESS_REFUSED" in text
    assert WRONG not in text


@pytest.mark.timeout(120)
async def test_worker_logs_hold_no_password_through_a_reconnect(
    tls_node: TlsNode, tmp_path
) -> None:
    """A worker on TLS, with debug logs, whose connection is cut and comes back: its output
    holds neither the password of ``amqp_url`` nor that of ``amqp_password_file``."""
    proxy = await TcpProxy(tls_node.tls_port).start()
    config = {
        # The URL's password is replaced by the file's; neither may be printed.
        "amqp_url": [tls_node.url(host="127.0.0.1", port=proxy.port, password=WRONG)],
        "amqp_ca_file": str(tls_node.ca),
        "amqp_password_file": str(secret_file(tmp_path, SECRET)),
        "watch_queue": "tls.watch",
        "dead_letter_queue": "tls.dead",
        "events_exchange": "tls.events",
        "log_format": "json",
        "clusters": {
            "c1": {"url": f"http://127.0.0.1:{free_port()}", "username": "u", "password": "p"}
        },
    }
    worker = WorkerProcess(tmp_path, "tls", config, module="tests.faults.verbose_worker")
    worker.start()
    try:
        await worker.wait_ready()
        proxy.cut()
        await asyncio.sleep(3)  # reconnect attempts fail and are logged meanwhile
        proxy.restore()

        async def reconnected() -> bool:
            samples = await worker.metrics()
            return samples["ontap_poller_broker_reconnects_total"] >= 1

        await until(reconnected, 60, "the worker did not reconnect")
    finally:
        worker.terminate()
        await worker.wait_exit(30)
        await proxy.close()
    output = worker.output()
    assert '"level": "debug"' in output
    assert "broker.connection_lost" in output
    assert SECRET not in output
    assert WRONG not in output


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
