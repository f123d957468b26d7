"""compose.yaml as podman-compose runs it on this machine: the derived copy, and its containers."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml

from tests.compose.engine import Engine, compose_command

PROJECT_LABEL = "io.podman.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
#: /sys/class/net/*/addr_assign_type of an address set by hand, which the kernel keeps.
NET_ADDR_SET = "3"


def derive(source: Path, dest: Path) -> Path:
    """Write the copy of compose.yaml that podman-compose runs here, and return its path.

    Three changes, each for podman-compose or this machine, none to what the services run:
    - top-level `configs` (which podman-compose ignores) become read-only bind mounts at the
      same targets;
    - `ports` go: the host's own RabbitMQ holds 5672, and the test reaches nothing through them;
    - relative paths (build context, secret and config files) become absolute, as the copy lives
      elsewhere.
    """
    compose = yaml.safe_load(source.read_text(encoding="utf-8"))
    base = source.parent.resolve()
    configs = compose.pop("configs", {})
    for service in compose["services"].values():
        service.pop("ports", None)
        if isinstance(service.get("build"), str):
            service["build"] = str(base / service["build"])
        mounts = [
            f"{base / configs[ref['source']]['file']}:{ref['target']}:ro"
            for ref in service.pop("configs", [])
        ]
        if mounts:
            service["volumes"] = [*service.get("volumes", []), *mounts]
    for secret in compose.get("secrets", {}).values():
        secret["file"] = str(base / secret["file"])
    dest.write_text(yaml.safe_dump(compose, sort_keys=False), encoding="utf-8")
    return dest


class Stack:
    """One project of the derived compose file; every container and network it made, by id."""

    def __init__(self, engine: Engine, file: Path, project: str) -> None:
        self.engine = engine
        self.file = file
        self.project = project
        self.ids: dict[str, str] = {}

    def compose(self, *args: str, timeout_s: float = 120) -> str:
        """`podman-compose ARGS` on this project; no pod, which would be one more thing to remove."""
        argv = [*compose_command(), "--in-pod=false", "-p", self.project, "-f", str(self.file)]
        return self.engine.run([*argv, *args], timeout_s)

    def up(self, *services: str) -> None:
        """Start `services` detached, without their dependencies: the caller starts those first.

        podman-compose ignores `condition: service_healthy` on podman 4.3, so the test starts
        the services in stages, each once the ones it depends on are healthy.
        """
        self.compose("up", "--detach", "--no-build", "--no-deps", *services)
        self.ids.update(self.containers())
        for network in self.networks():
            self.pin_bridge_mac(network)

    def pin_bridge_mac(self, network: str) -> None:
        """Fix the MAC address of the network's bridge, which netavark 1.4 leaves to the kernel.

        A bridge without one takes the lowest MAC of its ports: a container that joins with a lower
        one changes the gateway's MAC under the others, whose ARP entries go stale. Their DNS
        queries (to aardvark-dns, on the gateway) are then lost for 30 s or more. netavark 1.9
        sets the MAC itself (containers/netavark#833).
        """
        bridge = self.engine.podman(
            "network", "inspect", "--format", "{{.NetworkInterface}}", network
        ).strip()
        sys_dir = Path("/sys/class/net") / bridge
        if (sys_dir / "addr_assign_type").read_text().strip() != NET_ADDR_SET:
            mac = (sys_dir / "address").read_text().strip()
            subprocess.run(["ip", "link", "set", "dev", bridge, "address", mac], check=True)

    def containers(self) -> dict[str, str]:
        """The project's containers: service name to container id."""
        listed = self.engine.podman(
            "ps", "--all", "--format=json", f"--filter=label={PROJECT_LABEL}={self.project}"
        )
        return {c["Labels"][SERVICE_LABEL]: c["Id"] for c in json.loads(listed or "[]")}

    def networks(self) -> list[str]:
        """The ids of the project's networks."""
        listed = self.engine.podman(
            "network",
            "ls",
            "--quiet",
            "--no-trunc",
            f"--filter=label={PROJECT_LABEL}={self.project}",
        )
        return listed.split()

    def until_healthy(self, *services: str, timeout_s: float = 90) -> None:
        """Run the services' health checks until each passes: without systemd, nothing else does."""
        waiting = set(services)
        deadline = time.monotonic() + timeout_s
        while waiting:
            for service in sorted(waiting):
                if self.engine.try_podman("healthcheck", "run", self.ids[service]).returncode == 0:
                    waiting.discard(service)
            if waiting:
                assert time.monotonic() < deadline, (
                    f"not healthy within {timeout_s:.0f} s: {sorted(waiting)}\n"
                    + "\n".join(f"--- {s}\n{self.logs(s)[-3000:]}" for s in sorted(waiting))
                )
                time.sleep(1)

    def exec(self, service: str, *argv: str) -> str:
        """Run `argv` in the service's container, as its user; its stdout."""
        return self.engine.podman("exec", self.ids[service], *argv)

    def python(self, service: str, code: str) -> str:
        """Run Python code in the service's container; what it printed."""
        return self.exec(service, "python", "-c", code)

    def logs(self, service: str) -> str:
        """The service's output so far, stdout and stderr."""
        found = self.engine.try_podman("logs", self.ids[service])
        return found.stdout + found.stderr

    def inspect(self, service: str, template: str) -> str:
        """One value of `podman inspect` of the service's container."""
        return self.engine.podman("inspect", "--format", template, self.ids[service]).strip()

    def wait(self, service: str, timeout_s: float) -> int:
        """Wait for the service's container to exit; its exit status."""
        return int(self.engine.podman("wait", self.ids[service], timeout_s=timeout_s).strip())

    def stop(self, *services: str) -> None:
        """Stop services as compose does: their stop signal, then SIGKILL after the grace period."""
        self.compose("stop", *services, timeout_s=60)

    def remove(self) -> None:
        """Remove the project's containers and networks by id; whatever else exists is not touched."""
        ids = {*self.ids.values(), *self.containers().values()}
        if ids:
            self.engine.podman("rm", "--force", "--time=0", *sorted(ids))
        networks = self.networks()
        if networks:
            self.engine.podman("network", "rm", *networks)
