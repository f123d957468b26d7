"""Events are written exactly as the cloudevents package's to_binary writes them, and read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_binary, to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from poller.events import Envelope, job_event, watch_event
from poller.models import Job
from poller.tracking import Change, Outcome

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
RAW: dict[str, Any] = {
    "_links": {"self": {"href": f"/api/cluster/jobs/{JOB}"}},
    "code": 0,
    "description": "Volume \u00e9 create",  # non-ASCII, as ONTAP may send it
    "message": 'Creating "vol1"',
    "start_time": "2026-11-28T12:00:00+00:00",
    "state": "running",
    "uuid": JOB,
}


def reference(envelope: Envelope, data: dict[str, Any]) -> RabbitMQMessage:
    """The same attributes and data, encoded by the cloudevents package."""
    attributes: dict[str, Any] = {k.removeprefix("ce-"): v for k, v in envelope.headers.items()}
    attributes["time"] = envelope.timestamp
    attributes["datacontenttype"] = "application/json"
    return to_binary(CloudEvent(attributes=attributes, data=data), JSONFormat())


def change(state: str, previous: str | None, n: int, kind: str = "state") -> Change:
    return Change(kind, Job(job(state)), state, previous, index=n)  # type: ignore[arg-type]


def job(state: str) -> dict[str, Any]:
    return {**RAW, "state": state}


NOT_FOUND = {"error": {"message": "entry doesn't exist", "code": "4", "target": "uuid"}}


@pytest.mark.parametrize(
    ("envelope", "data"),
    [
        (
            job_event("c1", JOB, change("queued", None, 0), datetime(2026, 11, 28, tzinfo=UTC)),
            job("queued"),
        ),
        (
            job_event(
                "c1",
                JOB,
                change("running", "queued", 1),
                datetime(2026, 11, 28, 1, 2, 3, 456789, UTC),
            ),
            job("running"),
        ),
        (
            job_event(
                "cluster-2",
                JOB,
                change("running", "running", 1, kind="progress"),
                datetime(2026, 11, 28, 12, tzinfo=timezone(timedelta(hours=2))),
            ),
            job("running"),
        ),
        (
            watch_event(
                "c1",
                JOB,
                Outcome.NOT_FOUND,
                body=NOT_FOUND,
                previous_state=None,
                watch_key="corr-1",
                correlation_id="corr-1",
                seen_at=datetime(2026, 11, 28, tzinfo=UTC),
            ),
            NOT_FOUND,
        ),
    ],
    ids=["first-sight", "change-with-microseconds", "progress-not-utc", "watch-not-found"],
)
def test_headers_and_body_are_what_to_binary_writes(
    envelope: Envelope, data: dict[str, Any]
) -> None:
    """Every ce-* header, its order, and the body bytes equal the cloudevents package's output."""
    expected = reference(envelope, data)

    assert list(envelope.headers.items()) == list(expected.headers.items())
    assert envelope.body == expected.body
    event = from_binary(
        RabbitMQMessage(envelope.headers, "application/json", envelope.body), JSONFormat()
    )
    assert event.get_id() == envelope.message_id
    assert event.get_data() == data
