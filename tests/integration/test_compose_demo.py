"""compose.yaml's demo, played as plain processes: the services' own commands, env and secret.

No Docker engine here, so each service of compose.yaml that runs this package is started as a
process with exactly its ``command``/``entrypoint`` and ``environment``, rewritten only where compose
networking would differ: service host names become 127.0.0.1, ports become free ones, the secret's
``/run/secrets`` path becomes its file in the repository, and queue names become this test's own.
tests/compose/ runs the same services in containers (`pytest -m compose`).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Names, wait_for_queue

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Demo:
    """compose.yaml's services, rewritten for processes on this machine."""

    def __init__(self, amqp_url: str, names: Names) -> None:
        self.compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
        self.sim_port = free_port()
        self.http_port = free_port()
        secrets = self.compose["secrets"]
        self.rewrites = {
            "amqp://guest:guest@rabbitmq:5672/": amqp_url,
            "http://ontap-sim:8080": f"http://127.0.0.1:{self.sim_port}",
            "--port=8080": f"--port={self.sim_port}",
            "--host=0.0.0.0": "--host=127.0.0.1",
            "127.0.0.1:9102": f"127.0.0.1:{self.http_port}",
            "127.0.0.1:8080": f"127.0.0.1:{self.sim_port}",
        }
        for name, spec in secrets.items():
            path = str((ROOT / spec["file"]).resolve())
            self.rewrites[f"/run/secrets/{name}"] = path
        self.queues = {
            "POLLER_WATCH_QUEUE": names.watch_queue,
            "POLLER_DEAD_LETTER_QUEUE": names.dead_letter_queue,
            "POLLER_EVENTS_EXCHANGE": names.events_exchange,
        }

    def rewrite(self, text: str) -> str:
        for old, new in self.rewrites.items():
            text = text.replace(old, new)
        return text

    def argv(self, service: str) -> list[str]:
        spec = self.compose["services"][service]
        entrypoint = spec.get("entrypoint", ["ontap-job-poller"])
        argv = [self.rewrite(str(part)) for part in [*entrypoint, *spec.get("command", [])]]
        if argv[0] == "ontap-job-poller":
            return [sys.executable, "-m", "poller", *argv[1:]]
        if argv[0] == "python":
            # A config mounted at /demo-client.py in the container: the repository's file here.
            configs = {c["target"]: c["source"] for c in spec.get("configs", [])}
            script = self.compose["configs"][configs[argv[1]]]["file"]
            return [sys.executable, str(ROOT / script), *argv[2:]]
        raise AssertionError(f"unexpected command for {service}: {argv}")

    def env(self, service: str) -> dict[str, str]:
        spec = self.compose["services"][service]
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLLER_")}
        env.update({k: self.rewrite(str(v)) for k, v in spec.get("environment", {}).items()})
        env.update(self.queues)
        if "POLLER_HTTP_PORT" in env:
            env["POLLER_HTTP_PORT"] = str(self.http_port)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    async def start(self, service: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.argv(service),
            env=self.env(service),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    def healthcheck(self, service: str) -> list[str]:
        test = [
            self.rewrite(str(part))
            for part in self.compose["services"][service]["healthcheck"]["test"]
        ]
        assert test[0] == "CMD"
        assert test[1] == "python"
        return [sys.executable, *test[2:]]


async def healthy(argv: list[str]) -> bool:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return await process.wait() == 0


async def until_healthy(argv: list[str], attempts: int = 150) -> None:
    """Run the health check as Docker would, until it passes."""
    for _ in range(attempts):
        if await healthy(argv):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"health check never passed: {argv}")


async def stop(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    if process.returncode is None:
        process.terminate()
    return await asyncio.wait_for(process.communicate(), 15)


@pytest.mark.timeout(90)
async def test_compose_services_show_a_job_from_request_to_success(amqp_url, names) -> None:
    """Simulator, poller and demo client, as compose runs them: the demo job ends in success."""
    demo = Demo(amqp_url, names)
    sim = await demo.start("ontap-sim")
    poller = None
    try:
        await until_healthy(demo.healthcheck("ontap-sim"))
        poller = await demo.start("poller")
        await until_healthy(demo.healthcheck("poller"))
        await wait_for_queue(amqp_url, names.watch_queue)
        client = await demo.start("demo-client")
        out, err = await asyncio.wait_for(client.communicate(), 60)
        assert client.returncode == 0, out.decode() + err.decode()
    finally:
        if poller is not None:
            _, poller_log = await stop(poller)
        await stop(sim)
    text = out.decode()
    assert "job.cluster1.running" in text
    assert "job.cluster1.success" in text
    summary = text.strip().splitlines()[-1]
    assert re.fullmatch(r"job \S+ success after [\d.]+s: Complete: Successful \(exit 0\)", summary)
    assert poller.returncode == 0
    assert b"netapp1!" not in poller_log
