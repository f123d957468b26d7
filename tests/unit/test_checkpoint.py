"""The x-poller-checkpoint header: what a watch carries from one delivery to the next."""

from __future__ import annotations

import json
from typing import Any

import pytest

from poller import checkpoint
from poller.checkpoint import Checkpoint
from poller.errors import InvalidRequest
from poller.tracking import Progress

JOB = {"uuid": "1cd8a442-86d1-11e0-ae1c-123478563412", "state": "running", "message": "½ done"}
GOOD = {
    "v": 1,
    "watch_id": "w-1",
    "deadline_at": 1795894264.5,
    "state": "running",
    "changes": 2,
    "message": "½ done",
    "job": JOB,
}


@pytest.mark.parametrize(
    "saved",
    [
        Checkpoint("w-1", 1795894264.5),
        Checkpoint("w-2", 1.0, Progress("queued", 1, "Queued", {"uuid": "u", "state": "queued"})),
        Checkpoint("w-3", 1e12, Progress("running", 7, "½ done — ünïcode", JOB)),
        Checkpoint("w-4", 0.25, Progress("some-future-state", 3, None, None)),
    ],
)
def test_round_trip(saved: Checkpoint) -> None:
    """Whatever is encoded is decoded identically, from str or from the bytes AMQP delivers."""
    value = checkpoint.encode(saved)
    assert checkpoint.decode(value) == saved
    assert checkpoint.decode(value.encode()) == saved


def test_encoding_is_compact_versioned_json() -> None:
    """One compact, versioned, ASCII JSON object: it rides in every re-enqueued request."""
    value = checkpoint.encode(
        Checkpoint("w-1", 1795894264.5, Progress("running", 2, "½ done", JOB))
    )
    assert json.loads(value) == GOOD
    assert value == json.dumps(json.loads(value), separators=(",", ":"))
    assert value.isascii()  # safe in any AMQP header, whatever ONTAP's message says


def test_the_deadline_and_n_survive_exactly() -> None:
    """A resumed watch keeps its deadline to the fraction and its count of published changes."""
    saved = checkpoint.decode(
        checkpoint.encode(Checkpoint("w", 1795894264.123456, Progress("x", 41)))
    )
    assert saved.deadline_at == 1795894264.123456
    assert saved.progress.changes == 41


@pytest.mark.parametrize(
    ("what", "value"),
    [
        ("not JSON", "{not json"),
        ("not UTF-8", b"\xff\xfe"),
        ("a JSON array", "[1, 2]"),
        ("a number", 42),
        ("no version", {k: v for k, v in GOOD.items() if k != "v"}),
        ("another version", {**GOOD, "v": 2}),
        ("no watch_id", {k: v for k, v in GOOD.items() if k != "watch_id"}),
        ("no deadline", {k: v for k, v in GOOD.items() if k != "deadline_at"}),
        ("deadline not a number", {**GOOD, "deadline_at": "tomorrow"}),
        ("negative n", {**GOOD, "changes": -1}),
        ("n not a number", {**GOOD, "changes": "2"}),
        ("n a float", {**GOOD, "changes": 2.5}),
        ("no state key", {k: v for k, v in GOOD.items() if k != "state"}),
        ("no job key", {k: v for k, v in GOOD.items() if k != "job"}),
    ],
)
def test_a_damaged_or_forged_header_makes_the_request_invalid(what: str, value: Any) -> None:
    """The request is dead-lettered (kind "checkpoint"); the worker itself is never hurt."""
    raw = json.dumps(value) if isinstance(value, dict) else value
    with pytest.raises(InvalidRequest) as caught:
        checkpoint.decode(raw)
    assert caught.value.kind == "checkpoint", what
    assert checkpoint.HEADER in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [("state", 5, None), ("message", ["x"], None), ("job", "not an object", None)],
)
def test_wrongly_typed_optional_parts_are_dropped(field: str, value: Any, expected: Any) -> None:
    """A state, message or job of the wrong type reads as absent rather than as garbage."""
    saved = checkpoint.decode(json.dumps({**GOOD, field: value}))
    assert getattr(saved.progress, field) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        ("{not json", "Invalid JSON: key must be a string at line 1 column 2"),
        (json.dumps({**GOOD, "v": 2}), "Input should be 1"),
        (json.dumps({**GOOD, "changes": -1}), "Input should be greater than or equal to 0"),
        (42, "JSON input should be string, bytes or bytearray"),
    ],
)
def test_the_reason_names_what_is_wrong(value: Any, reason: str) -> None:
    """x-poller-error names the header and the first thing wrong with it, in one short line."""
    with pytest.raises(InvalidRequest) as caught:
        checkpoint.decode(value)
    assert str(caught.value) == f"x-poller-checkpoint: unreadable ({reason})"
