"""The stack's images, made without a registry: Debian bases by mmdebstrap, the project's from wheels.

Every image made here carries the label ``LABEL``; to start cold, remove them all (and nothing else):
``podman rmi $(podman images --quiet --filter label=ontap-job-poller.test=compose)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.compose.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
LABEL = "ontap-job-poller.test=compose"
INPUTS_LABEL = "ontap-job-poller.test.inputs"
#: The Debian release of the Dockerfile's default base, python:3.11-slim-bookworm.
SUITE = "bookworm"
APT_SOURCES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Rootfs:
    """A Debian root filesystem made into an image: what goes in, and the image's settings."""

    tag: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()


#: A stand-in for python:3.11-slim-bookworm: Debian's own Python 3.11.
PYTHON = Rootfs(
    tag="localhost/ontap-job-poller-test/python:3.11-bookworm",
    packages=("python3", "python3-venv", "python3-pip", "ca-certificates"),
    changes=(f"ENV {PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]'),
)
#: A stand-in for compose.yaml's rabbitmq:3.13-management: Debian's RabbitMQ 3.10, management on.
RABBITMQ = Rootfs(
    tag="localhost/rabbitmq:3.13-management",
    packages=("rabbitmq-server",),
    hooks=(
        'chroot "$1" rabbitmq-plugins enable --offline rabbitmq_management',
        'printf "loopback_users.guest = false\\n" > "$1/etc/rabbitmq/rabbitmq.conf"',
    ),
    changes=(
        f"ENV {PATH}",
        "ENV HOME=/var/lib/rabbitmq",
        "ENV RABBITMQ_LOGS=-",  # the log on stdout, as the official image has it
        "USER rabbitmq",
        "WORKDIR /var/lib/rabbitmq",
        "EXPOSE 5672",
        "EXPOSE 15672",
        # The server itself, not Debian's wrapper, which logs to files and would run it as a child.
        'CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]',
    ),
)
#: compose.yaml's name for the project's image.
PROJECT = "localhost/ontap-job-poller:local"


def apt_sources() -> list[Path]:
    """The host's enabled apt sources for SUITE (Debian's own; third-party ones name other suites)."""
    suite = re.compile(rf"(^|\s){SUITE}(-updates|-security)?(\s|$)", re.MULTILINE)
    return [
        path
        for path in APT_SOURCES
        if path.suffix in {".list", ".sources"}
        and path.is_file()
        and suite.search(path.read_text(encoding="utf-8"))
    ]


def inputs_digest(rootfs: Rootfs, sources: list[Path]) -> str:
    """A digest of all that decides the image's content except the archive's own updates."""
    inputs = {
        "suite": SUITE,
        "rootfs": [rootfs.packages, rootfs.hooks, rootfs.changes],
        "sources": [path.read_text(encoding="utf-8") for path in sources],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def image_label(engine: Engine, tag: str, label: str) -> str | None:
    """The value of one label of a local image; None when there is no such image."""
    found = engine.try_podman("image", "inspect", "--format", "{{json .Labels}}", tag)
    if found.returncode != 0:
        return None
    labels = json.loads(found.stdout) or {}
    return str(labels.get(label, ""))


def own_image(engine: Engine, tag: str) -> str | None:
    """The id of the image under `tag` if this test made it; None for any other or none."""
    key, value = LABEL.split("=")
    if image_label(engine, tag, key) != value:
        return None
    return engine.podman("image", "inspect", "--format", "{{.Id}}", tag).strip()


def remove_replaced(engine: Engine, image_id: str | None) -> None:
    """Remove an image of this test that a new one replaced under its tag, unless still in use.

    Never with --force, which would remove the containers using it: those may be another run's.
    """
    if image_id is not None:
        engine.try_podman("rmi", image_id)


def debian_image(engine: Engine, rootfs: Rootfs, workdir: Path) -> str:
    """The image of `rootfs`: mmdebstrap from the host's apt sources, then `podman import`.

    Reused while its inputs (packages, hooks, settings, apt sources) are unchanged: these
    images stand in for a pulled base image, which is not rebuilt on every run either. What the
    test proves is built afresh each time: the project's image, from the Dockerfile.
    """
    sources = apt_sources()
    digest = inputs_digest(rootfs, sources)
    if image_label(engine, rootfs.tag, INPUTS_LABEL) == digest:
        return rootfs.tag
    replaced = own_image(engine, rootfs.tag)
    tarball = workdir / f"{digest}.tar"
    argv = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        "--skip=output/dev",  # podman gives each container its own /dev
        f"--include={','.join(rootfs.packages)}",
        *(f"--customize-hook={hook}" for hook in rootfs.hooks),
        SUITE,
        str(tarball),
        *map(str, sources),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, (
        f"mmdebstrap failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    labels = [f"LABEL {LABEL}", f"LABEL {INPUTS_LABEL}={digest}"]
    changes = [f"--change={change}" for change in (*rootfs.changes, *labels)]
    engine.podman("import", *changes, str(tarball), rootfs.tag, timeout_s=300)
    tarball.unlink()
    remove_replaced(engine, replaced)
    return rootfs.tag


def wheelhouse(directory: Path) -> Path:
    """Wheels of the project's dependencies and of its build backend, made on the host by pip."""
    # The image's Python is Debian bookworm's 3.11: wheels made by another Python may not fit it.
    assert sys.version_info[:2] == (3, 11), "the compose test's wheels need Python 3.11"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = directory / "requirements.txt"
    directory.mkdir(parents=True, exist_ok=True)
    requirements.write_text(
        "\n".join([*project["build-system"]["requires"], *project["project"]["dependencies"]]),
        encoding="utf-8",
    )
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(directory)]
    result = subprocess.run(
        [*pip, "--requirement", str(requirements)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}{result.stderr}"
    return directory


def project_image(engine: Engine, base: str, wheels: Path) -> str:
    """Build the project's image from the Dockerfile, offline from `wheels`, every time afresh."""
    replaced = own_image(engine, PROJECT)
    engine.podman(
        "build",
        "--pull=never",
        "--no-cache",
        "--layers=false",  # no intermediate images left behind
        "--format=docker",  # the OCI format has no HEALTHCHECK
        "--network=none",  # proof that the build needs no index: all comes from the wheelhouse
        f"--label={LABEL}",
        f"--build-arg=PYTHON_IMAGE={base}",
        "--build-arg=PIP_NO_INDEX=1",
        f"--build-context=wheelhouse={wheels}",
        f"--tag={PROJECT}",
        str(ROOT),
        timeout_s=600,
    )
    remove_replaced(engine, replaced)
    return PROJECT


def build_all(engine: Engine, workdir: Path) -> None:
    """Every image compose.yaml needs, under the names it uses."""
    base = debian_image(engine, PYTHON, workdir)
    debian_image(engine, RABBITMQ, workdir)
    project_image(engine, base, wheelhouse(workdir / "wheels"))
