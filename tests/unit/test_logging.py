"""Logs: JSON lines off a terminal, console on one, no secrets, job and cluster on every watch line."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections import defaultdict
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs
from structlog.typing import EventDict

from poller.ontap import RetryPolicy
from poller.ops import REDACTED, configure_logging
from poller.simulator import FaultPlan, Simulator
from tests.fakes import FakeTTY
from tests.rig import PASSWORD, USER, cluster_rig


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_json_renders_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    """log_format=json: each line is a JSON object with event, level and an ISO timestamp."""
    configure_logging("json")
    structlog.get_logger("t").info("watch.started", job="j1", cluster="c1")
    line = capsys.readouterr().err.strip()
    record = json.loads(line)
    assert record["event"] == "watch.started"
    assert record["level"] == "info"
    assert record["job"] == "j1"
    assert record["timestamp"].endswith("Z")


def test_console_is_readable_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    """log_format=console: a line a person reads, with the event name and its fields."""
    configure_logging("console")
    structlog.get_logger("t").info("watch.started", job="j1")
    line = capsys.readouterr().err.strip()
    assert "watch.started" in line
    assert "job" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


@pytest.mark.parametrize(("stream", "is_json"), [(io.StringIO(), True), (FakeTTY(), False)])
def test_auto_picks_console_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, stream: io.StringIO, is_json: bool
) -> None:
    """log_format=auto: JSON in a container (no TTY), console on a terminal."""
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("auto")
    structlog.get_logger("t").info("worker.started")
    line = stream.getvalue().strip()
    assert line.startswith("{") is is_json


def test_secrets_never_reach_the_output(capsys: pytest.CaptureFixture[str]) -> None:
    """Password-like keys, Authorization headers and URL credentials are redacted."""
    configure_logging("json")
    structlog.get_logger("t").warning(
        "broker.connect_retrying",
        password=PASSWORD,
        authorization=f"Basic {PASSWORD}",
        url=f"amqp://user:{PASSWORD}@rabbit:5672/",
    )
    out = capsys.readouterr().err
    assert PASSWORD not in out
    record = json.loads(out)
    assert record["password"] == REDACTED
    assert record["url"] == f"amqp://{REDACTED}@rabbit:5672/"


async def test_every_line_of_a_watch_names_its_job_and_cluster() -> None:
    """Retries, a failed call, the event and the end of a watch all carry job and cluster."""
    sim = Simulator(username=USER, password=PASSWORD)
    job = sim.create_job(timeline=[{"after": 0, "state": "success"}])
    sim.faults = FaultPlan(error_rate=1.0, error_status=503)

    logged: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def watch_for(_logger: object, _name: str, entry: EventDict) -> EventDict:
        if entry["event"] == "ontap.call_failed":
            sim.faults = FaultPlan()  # ONTAP recovers; the next read sees the job's end
        logged[entry["event"]].set()
        return entry

    with capture_logs(processors=[structlog.contextvars.merge_contextvars, watch_for]) as logs:
        async with cluster_rig(sim=sim, feed=False, retry=RetryPolicy.instant(attempts=2)) as rig:
            watch = rig.watch(job)
            with structlog.contextvars.bound_contextvars(job=job, cluster="c1"):
                rig.admit(watch)
            async with asyncio.timeout(10):
                await logged["ontap.call_failed"].wait()
                await logged["watch.ended"].wait()

    assert watch.delivery.acks == 1  # type: ignore[attr-defined]
    names = [entry["event"] for entry in logs]
    assert {"ontap.call_retrying", "ontap.call_failed", "event.published", "watch.ended"} <= set(
        names
    )
    unbound = [entry for entry in logs if entry.get("job") != job or entry.get("cluster") != "c1"]
    assert unbound == []


def test_event_names_are_stable_dotted_identifiers() -> None:
    """Every event name the worker logs is lower-case dotted words, never prose.

    The Event-Driven Ansible source (``poller/eda``) runs inside ansible-rulebook and logs through
    its standard logging, in the style of its other sources: it is left out.
    """
    import re
    from pathlib import Path

    import poller

    pattern = re.compile(r"\blog\.(?:debug|info|warning|error|exception)\(\s*\"([^\"]+)\"")
    names: set[str] = set()
    for path in Path(poller.__file__).parent.rglob("*.py"):
        if "eda" not in path.parts:
            names.update(pattern.findall(path.read_text(encoding="utf-8")))
    assert names, "no log call found: the pattern no longer matches the code"
    bad = sorted(n for n in names if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", n))
    assert bad == []
