"""``python -m poller run`` as a real subprocess: its own config, output captured to files.

The fault tests kill and stop workers with real signals, so the worker must be a process of its
own. Blocking waits go through threads: the simulator the worker calls runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.faults.private_broker import free_port

REPO = Path(__file__).resolve().parents[2]


def toml_text(config: dict[str, Any]) -> str:
    """The few TOML shapes the tests need: scalars and arrays at the top, then ``[clusters.NAME]``
    tables."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in config.items() if key != "clusters"]
    for name, table in config.get("clusters", {}).items():
        lines.append(f"\n[clusters.{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


class WorkerProcess:
    """One worker process; ``output()`` is everything it wrote to stdout and stderr."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        config: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        module: str = "poller",
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.http_port = free_port()
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(toml_text({**config, "http_port": self.http_port}))
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("POLLER_")},
            "POLLER_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self._module = module
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self._module, "run", "--config", str(self.config_path)],
                cwd=REPO,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until ``/readyz`` says it is connected and consuming."""
        async with httpx.AsyncClient() as client, asyncio.timeout(timeout_s):
            while True:
                if not self.running:
                    raise AssertionError(f"{self.name} exited early:\n{self.output()[-3000:]}")
                try:
                    response = await client.get(f"http://127.0.0.1:{self.http_port}/readyz")
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)

    async def metrics(self) -> dict[str, float]:
        """Its Prometheus samples, ``name{labels}`` -> value."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.http_port}/metrics")
        samples: dict[str, float] = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or an OOM kill."""
        if self.running:
            os.kill(self.pid, signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the graceful stop."""
        if self.running:
            os.kill(self.pid, signal.SIGTERM)

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C in its terminal: the same graceful stop."""
        if self.running:
            os.kill(self.pid, signal.SIGINT)

    async def wait_exit(self, timeout_s: float) -> int:
        """The exit status; ``subprocess.TimeoutExpired`` if it is still running after that."""
        assert self.process is not None, "start() first"
        return await asyncio.to_thread(self.process.wait, timeout_s)

    def output(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.stdout_path, self.stderr_path)]
        return "\n".join(part for part in parts if part)

    def records(self) -> list[dict[str, Any]]:
        """Its JSON log lines: its own, and the libraries' (those carry a ``logger`` key)."""
        found: list[dict[str, Any]] = []
        for line in self.output().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append(record)
        return found

    def log_events(self) -> list[str]:
        """The ``event`` names of its JSON log lines, in order."""
        return [str(r.get("event")) for r in self.records()]

    def problems(self) -> list[str]:
        """Signs of a bug: the worker's own error lines, and tasks that died unnoticed.

        Libraries' error lines are left out: aio-pika logs a few while a connection is cut on
        purpose, and what matters is how the worker itself copes.
        """
        errors = [
            json.dumps(r)
            for r in self.records()
            if r.get("level") in ("error", "critical") and "logger" not in r
        ]
        lost = [line for line in self.output().splitlines() if "never retrieved" in line]
        return errors + lost
