"""The container engine: what must be installed, its settings on this machine, and its commands."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: Debian's podman and what it needs here; iptables for netavark's firewall, iproute2 for the
#: bridge's MAC address, mmdebstrap for the images.
APT_PACKAGES = (
    "podman",
    "buildah",
    "netavark",
    "aardvark-dns",
    "runc",
    "fuse-overlayfs",
    "slirp4netns",
    "uidmap",
    "catatonit",
    "iptables",
    "iproute2",
    "mmdebstrap",
)
PID_MAX = Path("/proc/sys/kernel/pid_max")


def missing_packages() -> list[str]:
    """The packages of APT_PACKAGES that dpkg does not list as installed."""
    if shutil.which("dpkg-query") is None:
        return list(APT_PACKAGES)
    result = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${Package} ${db:Status-Status}\n", *APT_PACKAGES],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    installed = {
        line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")
    }
    return [name for name in APT_PACKAGES if name not in installed]


def compose_command() -> list[str]:
    """podman-compose, run by this interpreter (the `test` extra installs it)."""
    return [sys.executable, "-m", "podman_compose"]


def missing() -> str | None:
    """What is missing to run the compose test, as one line saying how to install it; or None."""
    lines = []
    packages = missing_packages()
    if packages:
        lines.append(
            f"{', '.join(packages)} not installed: apt-get install {' '.join(APT_PACKAGES)}"
        )
    try:
        import podman_compose  # noqa: F401
    except ImportError:
        lines.append("podman-compose not installed: pip install -e '.[test]'")
    if os.geteuid() != 0:
        lines.append("the compose test runs podman as root (netavark networks, iptables)")
    return "; ".join(lines) or None


def containers_conf(path: Path) -> Path:
    """Write the engine's settings for this machine; CONTAINERS_CONF points podman at them."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # The engine's own processes hold nproc at kernel.pid_max; a container gets no more than that.
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], int(PID_MAX.read_text()))
    path.write_text(
        "[containers]\n"
        "# Root here lacks CAP_SYS_RESOURCE: containers keep within the hard limits, not podman's\n"
        "# defaults (1048576 files), which runc would be refused.\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "\n"
        "[engine]\n"
        "# crun refuses this machine's hybrid cgroups (v1 controllers beside a v2 mount).\n"
        'runtime = "runc"\n',
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True)
class Engine:
    """podman and podman-compose, both with this test's containers.conf."""

    conf: Path

    def env(self) -> dict[str, str]:
        """The environment of every engine command."""
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(self, argv: list[str], timeout_s: float = 120) -> str:
        """Run one engine command; its stdout, or an AssertionError that shows its output."""
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=timeout_s, env=self.env()
        )
        assert result.returncode == 0, (
            f"{' '.join(argv)} exited {result.returncode}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
        return result.stdout

    def podman(self, *args: str, timeout_s: float = 120) -> str:
        """`podman ARGS`, checked."""
        return self.run(["podman", *args], timeout_s)

    def try_podman(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """`podman ARGS`, its exit status left to the caller."""
        return subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
            env=self.env(),
        )
