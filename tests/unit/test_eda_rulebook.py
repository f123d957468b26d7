"""The Event-Driven Ansible source: its arguments, and each kind of event as a rulebook event."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest

import poller.eda
from poller.amqp.subscriber import Received
from poller.eda.rulebook import SourceArgs, rulebook_event
from poller.events import Envelope, job_event, watch_event
from poller.models import Job
from poller.tracking import Change, Outcome

SEEN_AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
UUID = "1cd8a442-86d1-11e0-ae1c-123478563412"
JOB = {"uuid": UUID, "state": "failure", "code": 13303812, "message": "Destination volume is full"}
ERROR = {"error": {"code": "4", "message": "entry doesn't exist", "target": "uuid"}}


def as_received(envelope: Envelope) -> Received:
    """The envelope as a subscriber of the exchange receives it."""
    return Received(
        routing_key=envelope.routing_key,
        headers=dict(envelope.headers),
        body=envelope.body,
        content_type="application/json",
        properties={"message_id": envelope.message_id},
    )


def change(
    state: str, previous: str | None, kind: Literal["state", "progress"] = "state"
) -> Change:
    job = Job.from_ontap({**JOB, "state": state})
    return Change(kind=kind, job=job, state=state, previous_state=previous, index=1)


def watch(outcome: Outcome, body: dict[str, Any], previous: str | None) -> Envelope:
    return watch_event(
        "c1",
        UUID,
        outcome,
        body=body,
        previous_state=previous,
        watch_key="corr-1",
        correlation_id="corr-1",
        seen_at=SEEN_AT,
    )


@pytest.mark.parametrize(
    ("envelope", "kind", "previous"),
    [
        (job_event("c1", UUID, change("failure", "running"), SEEN_AT), "job", "running"),
        (job_event("c1", UUID, change("queued", None), SEEN_AT), "job", None),
        (
            job_event("c1", UUID, change("running", "running", "progress"), SEEN_AT),
            "job",
            "running",
        ),
        (watch(Outcome.TIMEOUT, JOB, "running"), "job", "running"),
        (watch(Outcome.NOT_FOUND, ERROR, None), "error", None),
        (
            watch(Outcome.ERROR, {"error": {"code": "6", "message": "denied"}}, "queued"),
            "error",
            "queued",
        ),
    ],
    ids=["job.failure", "job.first", "progress", "watch.timeout", "watch.not_found", "watch.error"],
)
def test_each_event_becomes_one_rulebook_event(
    envelope: Envelope, kind: str, previous: str | None
) -> None:
    """CloudEvent attributes at the top; the job object under job, ONTAP's error under error."""
    event = rulebook_event(as_received(envelope))
    assert event is not None
    body = json.loads(envelope.body)
    assert event == {
        "id": envelope.headers["ce-id"],
        "type": envelope.type,
        "source": "/clusters/c1",
        "subject": UUID,
        "time": "2026-01-02T03:04:05.678901Z",
        "cluster": "c1",
        "previous_state": previous,
        "routing_key": envelope.routing_key,
        kind: body["error"] if kind == "error" else body,
    }


def test_a_message_that_is_no_cloudevent_is_none() -> None:
    """Something else published on the exchange is not passed to the rules."""
    plain = Received("job.c1.success", {}, b"not json", "text/plain", {})
    assert rulebook_event(plain) is None
    no_object = as_received(job_event("c1", UUID, change("success", None), SEEN_AT))
    assert (
        rulebook_event(
            Received(no_object.routing_key, no_object.headers, b"[1]", "application/json", {})
        )
        is None
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, SourceArgs("amqp://guest:guest@localhost:5672/", "ontap.jobs", ("#",), None)),
        (
            {
                "amqp_url": ["amqp://a/", "amqp://b/"],
                "exchange": "x",
                "bindings": ["job.#"],
                "queue": "q",
            },
            SourceArgs(["amqp://a/", "amqp://b/"], "x", ("job.#",), "q"),
        ),
        ({"bindings": "watch.#", "queue": ""}, SourceArgs(bindings=("watch.#",))),
        ({"eda_feedback_queue": object()}, SourceArgs()),
    ],
    ids=["defaults", "everything", "one-key-no-queue", "rulebook-extras"],
)
def test_source_args(args: dict[str, Any], expected: SourceArgs) -> None:
    """Section 9's arguments with their defaults; ansible-rulebook's own eda_* are ignored."""
    assert SourceArgs.parse(args) == expected


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"binding": ["#"]}, "unknown argument binding"),
        ({"amqp_url": []}, "amqp_url"),
        ({"amqp_url": 5672}, "amqp_url"),
        ({"exchange": ""}, "exchange"),
        ({"bindings": []}, "bindings"),
        ({"bindings": ["job.#", 3]}, "bindings"),
        ({"queue": 7}, "queue"),
    ],
)
def test_bad_source_args_name_the_argument(args: dict[str, Any], named: str) -> None:
    """A typo or a wrong type stops the source at once, saying which argument."""
    with pytest.raises(ValueError, match=named):
        SourceArgs.parse(args)


def test_the_source_directory_is_found_without_ansible() -> None:
    """`python -m poller.eda` prints the -S directory, which holds the plugin; no Ansible imported."""
    printed = subprocess.run(
        [sys.executable, "-m", "poller.eda"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    assert Path(printed) == poller.eda.SOURCE_DIR
    assert (Path(printed) / "ontap_job_events.py").is_file()
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, poller.eda.ontap_job_events as p; "
            "print(p.DOCUMENTATION is not None, any(m.startswith(('ansible', 'drools')) for m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert imported == ["True", "False"]


def test_the_readme_shows_the_example_rulebook_as_it_is() -> None:
    """README's rulebook block is examples/ontap_job_events.yml, the one the EDA test runs."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    shown = re.search(
        r"<!-- rulebook: examples/ontap_job_events.yml -->\n```yaml\n(.*?)```", readme, re.DOTALL
    )
    assert shown is not None
    assert shown[1] == (root / "examples" / "ontap_job_events.yml").read_text(encoding="utf-8")


def test_the_plugin_documents_exactly_its_arguments_and_defaults() -> None:
    """DOCUMENTATION is YAML naming each argument with the default SourceArgs applies."""
    import yaml

    from poller.eda import ontap_job_events

    options = yaml.safe_load(ontap_job_events.DOCUMENTATION)["options"]
    defaults = SourceArgs()
    assert set(options) == {"amqp_url", "exchange", "bindings", "queue"}
    assert options["amqp_url"]["default"] == defaults.amqp_url
    assert options["exchange"]["default"] == defaults.exchange
    assert tuple(options["bindings"]["default"]) == defaults.bindings
    assert "default" not in options["queue"] and defaults.queue is None
    assert yaml.safe_load(ontap_job_events.EXAMPLES)[0]["sources"][0]["ontap_job_events"]
