"""compose.yaml run for real, in podman: the demo end to end, then the sidecar's user, secret and stop.

Runs with `pytest -m compose` (the default run leaves it out). Needs root and Debian's podman,
podman-compose and mmdebstrap, which `.ci/run` installs; where they are missing the test fails and
says what to install. About 1 min 45 s the first time on 2 cores, 45 s once the Debian base
images exist.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.compose import host, images
from tests.compose.engine import Engine, containers_conf, missing
from tests.compose.stack import Stack, derive

pytestmark = pytest.mark.compose

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SECRET = ROOT / "compose" / "ontap-password.txt"
#: The services that run until stopped (demo-client is one-shot).
LONG_RUNNING = ("rabbitmq", "ontap-sim", "poller", "events")
READYZ = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9102/readyz').status)"
SIM_STATS = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/_sim/stats').read().decode())"
READ_SECRET = "print(open('/run/secrets/ontap_password').read(), end='')"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """podman with this machine's settings; the test fails, naming what is missing, without it."""
    lacking = missing()
    if lacking:
        pytest.fail(f"the compose test cannot run: {lacking}", pytrace=False)
    return Engine(containers_conf(tmp_path / "containers.conf"))


@pytest.fixture
def stack(engine: Engine, tmp_path: Path) -> Iterator[Stack]:
    """The derived compose project; afterwards its containers, networks and host changes are gone."""
    before = host.capture()
    stack = Stack(engine, derive(COMPOSE, tmp_path / "compose.yaml"), f"ojp-test-{os.getpid()}")
    try:
        yield stack
    finally:
        try:
            stack.remove()
        finally:
            undone = host.restore(before)
            print("host restored:", ", ".join(undone) or "nothing to undo")


def image_healthcheck_passes(stack: Stack, service: str) -> bool:
    """The image's own HEALTHCHECK (compose.yaml sets another) passes in the service's container."""
    image = stack.inspect(service, "{{.ImageName}}")
    check = json.loads(
        stack.engine.podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image)
    )
    assert check["Test"][0] == "CMD", check
    return stack.engine.try_podman("exec", stack.ids[service], *check["Test"][1:]).returncode == 0


def until_subscribed(stack: Stack, timeout_s: float = 30) -> None:
    """Wait until the `events` service has bound its queue to the events exchange."""
    deadline = time.monotonic() + timeout_s
    while "ontap.jobs\t#" not in stack.exec(
        "rabbitmq", "rabbitmqctl", "-q", "list_bindings", "source_name", "routing_key"
    ):
        assert time.monotonic() < deadline, f"events never subscribed:\n{stack.logs('events')}"
        time.sleep(1)


def printed_events(stack: Stack, job: str) -> list[str]:
    """The routing keys that the `events` service printed for one job, in order."""
    keys = []
    for line in stack.logs("events").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event["headers"].get("ce-subject") == job:
                keys.append(event["routing_key"])
    return keys


def until_printed(stack: Stack, job: str, key: str, timeout_s: float = 10) -> list[str]:
    """Wait until `events` has printed `key` for the job (it may trail the client); all its keys."""
    deadline = time.monotonic() + timeout_s
    while key not in (keys := printed_events(stack, job)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return keys


def process_uids(stack: Stack, service: str) -> list[str]:
    """Real, effective, saved and filesystem uid of the service's main process."""
    status = stack.exec(service, "cat", "/proc/1/status")
    return next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))


def process_env(stack: Stack, service: str) -> list[str]:
    """The environment of the service's main process, as KEY=value items."""
    return stack.exec(service, "cat", "/proc/1/environ").split("\0")


def grace_period_s(service: str) -> float:
    """The service's stop_grace_period in compose.yaml, in seconds (compose's default: 10 s)."""
    grace = yaml.safe_load(COMPOSE.read_text())["services"][service].get("stop_grace_period", "10s")
    return float(grace.removesuffix("s"))


@pytest.mark.timeout(420)
def test_compose_stack_runs_the_demo_with_a_non_root_sidecar_that_stops_on_sigterm(
    engine: Engine, stack: Stack, tmp_path: Path
) -> None:
    """compose.yaml in podman: all healthy, the demo job's events, uid 10001, the secret, SIGTERM."""
    images.build_all(engine, tmp_path)

    # Started in the order of their `depends_on: condition: service_healthy`.
    stack.up("rabbitmq", "ontap-sim")
    stack.until_healthy("rabbitmq", "ontap-sim")
    stack.up("poller", "events")
    stack.until_healthy("poller")
    assert stack.python("poller", READYZ).strip() == "200"
    assert image_healthcheck_passes(stack, "poller")
    until_subscribed(stack)

    # The demo client has one job watched to its end; `events` prints the job's events.
    stack.up("demo-client")
    assert stack.wait("demo-client", timeout_s=90) == 0, stack.logs("demo-client")
    client = stack.logs("demo-client")
    job = client.split("created job ", 1)[1].split()[0]
    assert f"job {job} success" in client
    keys = until_printed(stack, job, "job.cluster1.success")
    shown = f"{client}\n--- events\n{stack.logs('events')}\n--- poller\n{stack.logs('poller')}"
    assert "job.cluster1.running" in keys, shown
    assert keys[-1] == "job.cluster1.success", shown

    # The sidecar runs unprivileged and takes its ONTAP password from the secret, and only there.
    assert process_uids(stack, "poller") == ["10001"] * 4
    environ = process_env(stack, "poller")
    assert "POLLER_ONTAP_PASSWORD_FILE=/run/secrets/ontap_password" in environ
    assert not [item for item in environ if item.startswith("POLLER_ONTAP_PASSWORD=")]
    assert stack.python("poller", READ_SECRET) == SECRET.read_text(encoding="utf-8")
    by_status = json.loads(stack.python("ontap-sim", SIM_STATS))["by_status"]
    assert set(by_status) == {"200"}, by_status  # the simulator refused none of its calls
    assert SECRET.read_text(encoding="utf-8").strip() not in stack.logs("poller")

    # Stopped as compose stops a project: the dependents first, each with its stop signal.
    stopping_at = time.time()
    stack.stop("poller", "events")
    stack.stop("ontap-sim", "rabbitmq")
    finished_at = int(stack.inspect("poller", "{{.State.FinishedAt.UnixNano}}")) / 1e9
    assert '"signal": "SIGTERM"' in stack.logs("poller")
    assert stack.inspect("poller", "{{.State.ExitCode}}") == "0", stack.logs("poller")
    assert finished_at - stopping_at < grace_period_s("poller")
    exits = {s: stack.inspect(s, "{{.State.ExitCode}}") for s in LONG_RUNNING}
    assert exits == dict.fromkeys(LONG_RUNNING, "0"), exits  # 137: killed after its grace period
