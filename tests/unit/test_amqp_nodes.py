"""What ``connect`` makes of its target (nodes, TLS, password file) and the failover order of
``NodeConnection``, without a broker."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from poller.amqp.connection import describe
from poller.amqp.nodes import (
    HEARTBEAT_S,
    PAUSE_S,
    BrokerTarget,
    NodeConnection,
    display,
    scrub,
)
from poller.config import load_settings

SECRET = "Nodes-secret-pw-0c4d"


@pytest.mark.parametrize(
    ("target", "urls"),
    [
        pytest.param("amqp://a:5672/", ("amqp://a:5672/",), id="one-url"),
        pytest.param("amqp://a/, amqp://b/", ("amqp://a/", "amqp://b/"), id="comma-separated"),
        pytest.param(["amqp://a/", "amqp://b/"], ("amqp://a/", "amqp://b/"), id="list"),
    ],
)
def test_target_of_urls(target: str | list[str], urls: tuple[str, ...]) -> None:
    """One URL, a comma-separated string or a list: the nodes, in the order given."""
    assert BrokerTarget.of(target) == BrokerTarget(urls=urls)


def test_target_of_settings_carries_tls_and_password_file(tmp_path: Path) -> None:
    """Settings give their nodes, CA bundle, client certificate and password file."""
    ca = trustme.CA()
    ca_file, secret = tmp_path / "ca.pem", tmp_path / "amqp-password"
    ca.cert_pem.write_to_path(str(ca_file))
    secret.write_text(SECRET + "\n", encoding="utf-8")
    environ = {
        "POLLER_AMQP_URL": "amqps://a:5671/,amqps://b:5671/",
        "POLLER_AMQP_CA_FILE": str(ca_file),
        "POLLER_AMQP_PASSWORD_FILE": str(secret),
    }
    target = BrokerTarget.of(load_settings(None, environ=environ))
    assert target == BrokerTarget(
        urls=("amqps://a:5671/", "amqps://b:5671/"), ca_file=ca_file, password_file=secret
    )
    urls, context, secrets = target.resolve()
    assert [str(url) for url in urls] == [
        f"amqps://guest:{SECRET}@a:5671/?heartbeat={HEARTBEAT_S}",
        f"amqps://guest:{SECRET}@b:5671/?heartbeat={HEARTBEAT_S}",
    ]
    assert context is not None
    assert context.get_ca_certs()  # the bundle, not only the system's CAs
    assert secrets == [SECRET]


def test_a_heartbeat_in_the_url_is_kept() -> None:
    """``?heartbeat=N`` in a URL wins over the default heartbeat."""
    urls, context, _ = BrokerTarget.of("amqp://u:p@a/?heartbeat=30").resolve()
    assert urls[0].query["heartbeat"] == "30"
    assert context is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"amqp://poller:{SECRET}@mq-1:5672/vh?heartbeat=5", "amqp://mq-1:5672/vh"),
        ("amqps://mq-2:5671/", "amqps://mq-2:5671/"),
        (f"not a url {SECRET}", "<invalid URL>"),
    ],
)
def test_display_never_shows_credentials(url: str, shown: str) -> None:
    """A node is shown by scheme, host, port and vhost only."""
    assert display(url) == shown


def test_scrub_replaces_every_secret() -> None:
    """Every known password in a text is replaced, the longer ones first."""
    text = f"refused: {SECRET} and {SECRET[:6]}"
    assert scrub(text, [SECRET, SECRET[:6]]) == "refused: [redacted] and [redacted]"


def test_repr_of_a_target_shows_no_password(tmp_path: Path) -> None:
    """``repr`` of a target lists its nodes without their credentials."""
    target = BrokerTarget.of([f"amqp://u:{SECRET}@a/", "amqp://b/"])
    assert repr(target) == "BrokerTarget(nodes=['amqp://a/', 'amqp://b/'])"


def failed() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(ConnectionRefusedError())
    return future


async def test_each_failed_node_moves_on_to_the_next() -> None:
    """Failed attempts go to the next node each time, round after round: no pause between the
    nodes of a round, a jittered pause once a whole round has failed."""
    urls = BrokerTarget.of("amqp://a/,amqp://b/,amqp://c/").resolve()[0]
    connection = NodeConnection(urls, start=0, reconnect_interval=PAUSE_S)
    try:
        assert (connection.node, connection.reconnect_interval) == ("amqp://a/", 0.0)
        tried, pauses = [], []
        for _ in range(4):  # a, b, c fail: a whole round; then a fails again
            await connection._on_connection_close(failed())
            tried.append(connection.node)
            pauses.append(connection.reconnect_interval)
        assert tried == ["amqp://b/", "amqp://c/", "amqp://a/", "amqp://b/"]
        assert str(connection.url).startswith("amqp://b/")
        assert pauses[:2] == [0.0, 0.0]
        assert PAUSE_S * 0.5 <= pauses[2] <= PAUSE_S * 1.5
        assert pauses[3] == 0.0
    finally:
        await connection.close()


async def test_a_single_node_pauses_after_each_failure() -> None:
    """With one node every failed attempt is a whole round: aio-pika waits before the next."""
    urls = BrokerTarget.of("amqp://a/").resolve()[0]
    connection = NodeConnection(urls, reconnect_interval=PAUSE_S)
    try:
        await connection._on_connection_close(failed())
        assert connection.node == "amqp://a/"
        assert connection.reconnect_interval >= PAUSE_S * 0.5
    finally:
        await connection.close()


def verification_error(message: str) -> Exception:
    """A TLS verification failure as aiormq raises it: wrapped in its own connection error."""
    cause = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    cause.verify_message = message
    wrapper = ConnectionError(*cause.args)
    wrapper.__cause__ = cause
    return wrapper


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        pytest.param(
            verification_error("self-signed certificate in certificate chain"),
            "not trusted (is amqp_ca_file the CA that signed it?)",
            id="unknown-ca",
        ),
        pytest.param(
            verification_error("Hostname mismatch, certificate is not valid for 'mq-9'."),
            "does not name this host",
            id="hostname",
        ),
        pytest.param(TimeoutError(), "no answer within", id="timeout"),
        pytest.param(ConnectionRefusedError(111, "refused"), "ConnectionRefusedError", id="other"),
    ],
)
def test_failures_are_described_for_an_operator(exc: Exception, words: str) -> None:
    """TLS failures say what to check, found under aiormq's wrapping; others keep their type."""
    assert words in describe(exc)
