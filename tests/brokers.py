"""Finding a RabbitMQ for the tests: env, the local broker, or a testcontainers one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from urllib.parse import urlparse

LOCAL_URL = "amqp://guest:guest@127.0.0.1:5672/"


def reachable(url: str, timeout_s: float = 1.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "localhost", parsed.port or 5672), timeout_s
        ):
            return True
    except OSError:
        return False


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return result.returncode == 0


def find_broker() -> tuple[str, object | None]:
    """The broker URL, and a container to stop afterwards (None when not ours).

    Order: ``POLLER_TEST_AMQP_URL``, then the local broker on 127.0.0.1:5672, then a RabbitMQ
    container through testcontainers when a Docker engine answers. Anything else is an error that
    says what is missing: integration tests never skip themselves.
    """
    configured = os.environ.get("POLLER_TEST_AMQP_URL")
    if configured:
        if not reachable(configured):
            raise RuntimeError(
                f"POLLER_TEST_AMQP_URL={configured} is set but nothing listens there"
            )
        return configured, None
    if reachable(LOCAL_URL):
        return LOCAL_URL, None
    if docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13-management")
        container.start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        return f"amqp://guest:guest@{host}:{port}/", container
    raise RuntimeError(
        "integration tests need RabbitMQ: set POLLER_TEST_AMQP_URL, start one on 127.0.0.1:5672 "
        "(rabbitmq-server -detached), or make a Docker engine available for testcontainers"
    )
