"""Deterministic ce-ids: the same change, the same id, after a restart, a redelivery, elsewhere."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from poller import checkpoint
from poller.checkpoint import Checkpoint
from poller.events import (
    PROGRESS_TYPE,
    change_id,
    job_event,
    progress_id,
    routing_key,
    watch_event,
    watch_id,
)
from poller.models import Job
from poller.tracking import Change, Outcome, Seen, Track, step
from tests.contract import event_id as contract_id

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LIFE = ["queued", "running", "paused", "running", "success"]


def seen(state: str, message: str | None = None) -> Seen:
    raw: dict[str, Any] = {"uuid": JOB, "state": state}
    if message is not None:
        raw["message"] = message
    return Seen(Job(raw))


def ids_from(track: Track, states: list[str], *, at: datetime = T0) -> tuple[Track, list[str]]:
    """Poll ``states`` in order from ``track`` as one worker would; the ce-ids it publishes."""
    ids = []
    for n, state in enumerate(states):
        result = step(track, seen(state, message=f"poll {n}"), publish_progress=False)
        if result.change is not None:
            ids.append(job_event("c1", JOB, result.change, at + timedelta(seconds=n)).message_id)
        track = result.track
    return track, ids


ZERO = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("cluster", "job", "n", "state", "expected"),
    [
        # Non-final: uuid5(NAMESPACE_URL, "ontap-job-poller:<cluster>/<job>/<n>/<state>").
        ("c1", JOB, 0, "queued", "fb5c987a-ee83-5212-9c36-4e719668c8bf"),
        ("c1", JOB, 1, "running", "04624903-46d9-549c-bf48-ec4ccff38f0b"),
        ("c1", JOB, 2, "paused", "7826af44-688e-5722-bf1a-339441009c21"),
        ("c1", JOB, 2, "some-new-state", "7091ec96-2f97-50ad-8590-73bdbf717155"),
        # Final: uuid5(NAMESPACE_URL, "ontap-job-poller:<cluster>/<job>/<state>"), whatever n.
        ("c1", JOB, 0, "success", "0870cdaa-1473-5577-a8f0-6b098ca5af1e"),
        ("c1", JOB, 4, "success", "0870cdaa-1473-5577-a8f0-6b098ca5af1e"),
        ("c1", JOB, 1, "failure", "c1dbb427-97e4-52a0-8b12-495e47c9dd87"),
        ("c1", JOB, 9, "failure", "c1dbb427-97e4-52a0-8b12-495e47c9dd87"),
        ("cluster-2", JOB, 3, "cancelled", "74519d1f-430f-5559-adb8-c5317c2280d8"),
        ("c_3", ZERO, 7, "expired", "d461c979-82b1-5346-847e-5bf3fa156cd0"),
    ],
)
def test_change_id_is_the_contract_formula(
    cluster: str, job: str, n: int, state: str, expected: str
) -> None:
    """ce-ids equal the contract's, written out here: n for non-final states, none for ends."""
    assert change_id(cluster, job, n, state) == expected


@pytest.mark.parametrize("state", ["success", "failure", "cancelled", "expired"])
def test_an_end_has_one_id_whatever_history_the_worker_saw(state: str) -> None:
    """Seen from queued, from paused, or only at the end: a job's end is named alike."""
    _, from_queued = ids_from(Track(), ["queued", "running", "paused", "running", state])
    _, from_paused = ids_from(Track(), ["paused", "running", state])
    _, only_end = ids_from(Track(), [state])
    assert from_queued[-1] == from_paused[-1] == only_end[-1] == contract_id("c1", JOB, 0, state)


@pytest.mark.parametrize(
    "other",
    [
        ("c2", JOB, 1, "running"),
        ("c1", JOB.replace("1", "2"), 1, "running"),
        ("c1", JOB, 2, "running"),
        ("c1", JOB, 1, "paused"),
    ],
)
def test_each_part_of_a_change_changes_its_id(other: tuple[str, str, int, str]) -> None:
    """Cluster, job, n and state each name a different change."""
    assert change_id(*other) != change_id("c1", JOB, 1, "running")


def test_the_id_ignores_when_it_was_seen_and_what_else_the_job_says() -> None:
    """Re-observed later, with another message, the same change keeps its id (and message_id)."""
    first = step(Track(), seen("running", "10% done"), publish_progress=False).change
    again = step(Track(), seen("running", "95% done"), publish_progress=False).change
    assert first is not None and again is not None
    a = job_event("c1", JOB, first, T0)
    b = job_event("c1", JOB, again, T0 + timedelta(hours=1))
    assert a.message_id == b.message_id == a.headers["ce-id"] == b.headers["ce-id"]
    assert a.body != b.body


def test_a_whole_life_uses_consecutive_n() -> None:
    """queued, running, paused, running, success: n = 0..4, the repeated state kept apart."""
    _, ids = ids_from(Track(), LIFE)
    assert ids == [contract_id("c1", JOB, n, state) for n, state in enumerate(LIFE)]
    assert len(set(ids)) == len(LIFE)


@pytest.mark.parametrize("cut", range(1, len(LIFE)))
def test_resuming_from_a_checkpoint_names_the_rest_alike(cut: int) -> None:
    """Any worker resuming the checkpoint names every later change as the uninterrupted one."""
    _, whole = ids_from(Track(), LIFE)
    track, before = ids_from(Track(), LIFE[:cut])
    value = checkpoint.encode(Checkpoint("w1", 1e12, track.progress))

    resumed = Track(progress=checkpoint.decode(value.encode()).progress)
    _, after = ids_from(resumed, LIFE[cut:], at=T0 + timedelta(days=1))

    assert before + after == whole


@pytest.mark.parametrize("cut", range(1, len(LIFE)))
def test_a_redelivered_older_checkpoint_republishes_with_the_same_ids(cut: int) -> None:
    """A copy one change behind re-publishes the last change under the id it already had."""
    _, published = ids_from(Track(), LIFE[:cut])
    behind, _ = ids_from(Track(), LIFE[: cut - 1])

    _, again = ids_from(behind, [LIFE[cut - 1]])

    assert again == published[-1:]


def test_progress_ids_depend_on_the_message_and_the_state_change_they_follow() -> None:
    """A progress event is named by its n, state and message; the same message again, same id."""
    a = progress_id("c1", JOB, 1, "running", "50%")
    assert a == progress_id("c1", JOB, 1, "running", "50%")
    assert a != progress_id("c1", JOB, 1, "running", "60%")
    assert a != progress_id("c1", JOB, 3, "running", "50%")
    assert a != change_id("c1", JOB, 1, "running")


@pytest.mark.parametrize("outcome", list(Outcome))
def test_watch_event_ids_are_per_watch_and_stable(outcome: Outcome) -> None:
    """watch.* ids derive from cluster, job, outcome and the watch's key (correlation_id)."""

    def envelope(key: str, at: datetime) -> str:
        return watch_event(
            "c1",
            JOB,
            outcome,
            body={"error": {"message": "x", "code": "0"}},
            previous_state=None,
            watch_key=key,
            correlation_id=key,
            seen_at=at,
        ).message_id

    name = f"ontap-job-poller:c1/{JOB}/watch/{outcome.value}/corr-1"
    assert envelope("corr-1", T0) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))
    assert envelope("corr-1", T0) == envelope("corr-1", T0 + timedelta(minutes=5))
    assert envelope("corr-1", T0) != envelope("corr-2", T0)
    assert watch_id("c1", JOB, outcome, "k") != watch_id("c2", JOB, outcome, "k")


def name_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


RUNNING = {"uuid": JOB, "state": "running", "message": "50%"}
SUBJECT = {"ce-specversion": "1.0", "ce-subject": JOB, "ce-time": "2026-11-28T12:00:00Z"}


@pytest.mark.parametrize(
    ("change", "routing", "ce_type", "event_id", "previous"),
    [
        pytest.param(
            Change("state", Job({"uuid": JOB, "state": "queued"}), "queued", None, 0),
            "job.c1.queued",
            "ontap.job.queued",
            "fb5c987a-ee83-5212-9c36-4e719668c8bf",
            {},
            id="first-sight-has-no-previous-state",
        ),
        pytest.param(
            Change("state", Job(RUNNING), "running", "queued", 1),
            "job.c1.running",
            "ontap.job.running",
            "04624903-46d9-549c-bf48-ec4ccff38f0b",
            {"ce-previousstate": "queued"},
            id="change-of-state",
        ),
        pytest.param(
            Change("progress", Job(RUNNING), "running", "running", 1),
            "progress.c1.running",
            "ontap.job.progress",
            name_id(f"ontap-job-poller:c1/{JOB}/1/running/progress/50%"),
            {"ce-previousstate": "running"},
            id="progress",
        ),
    ],
)
def test_a_job_event_is_the_contracts_cloudevent(
    change: Change, routing: str, ce_type: str, event_id: str, previous: dict[str, str]
) -> None:
    """Routing key, every ce-* header and the AMQP properties, as section 4 spells them."""
    envelope = job_event("c1", JOB, change, T0)

    assert envelope.routing_key == routing
    assert envelope.headers == {
        **SUBJECT,
        "ce-id": event_id,
        "ce-source": "/clusters/c1",
        "ce-type": ce_type,
        "ce-cluster": "c1",
        **previous,
    }
    assert (envelope.message_id, envelope.type, envelope.timestamp) == (event_id, ce_type, T0)
    assert envelope.correlation_id is None
    assert json.loads(envelope.body) == change.job.raw


@pytest.mark.parametrize(
    ("outcome", "previous_state", "correlation_id", "previous"),
    [
        (Outcome.TIMEOUT, "running", "corr-1", {"ce-previousstate": "running"}),
        (Outcome.NOT_FOUND, None, None, {}),
        (Outcome.ERROR, "paused", None, {"ce-previousstate": "paused"}),
    ],
)
def test_a_watch_event_is_the_contracts_cloudevent(
    outcome: Outcome,
    previous_state: str | None,
    correlation_id: str | None,
    previous: dict[str, str],
) -> None:
    """watch.<cluster>.<outcome>: the last state seen (if any), the watch's correlation_id, the body."""
    body = {"error": {"message": "entry doesn't exist", "code": "4"}}
    envelope = watch_event(
        "cluster-2",
        JOB,
        outcome,
        body=body,
        previous_state=previous_state,
        watch_key="key-1",
        correlation_id=correlation_id,
        seen_at=T0,
    )
    event_id = name_id(f"ontap-job-poller:cluster-2/{JOB}/watch/{outcome.value}/key-1")

    assert envelope.routing_key == f"watch.cluster-2.{outcome.value}"
    assert envelope.headers == {
        **SUBJECT,
        "ce-id": event_id,
        "ce-source": "/clusters/cluster-2",
        "ce-type": f"ontap.watch.{outcome.value}",
        "ce-cluster": "cluster-2",
        **previous,
    }
    assert envelope.message_id == event_id
    assert envelope.type == f"ontap.watch.{outcome.value}"
    assert (envelope.timestamp, envelope.correlation_id) == (T0, correlation_id)
    assert json.loads(envelope.body) == body


def test_a_progress_event_without_a_message_has_an_id_of_its_own() -> None:
    """A message that goes away is named by the empty message, never by the word None."""
    assert progress_id("c1", JOB, 2, "running", None) == name_id(
        f"ontap-job-poller:c1/{JOB}/2/running/progress/"
    )


@pytest.mark.parametrize(
    ("ce_type", "state", "expected"),
    [
        ("ontap.job.running", "running", "job.c1.running"),
        ("ontap.job.success", None, "job.c1.success"),
        (PROGRESS_TYPE, "paused", "progress.c1.paused"),
        ("ontap.watch.not_found", "running", "watch.c1.not_found"),
        ("ontap.watch.timeout", None, "watch.c1.timeout"),
        ("ontap.job.some.new_state", "some.new_state", "job.c1.some.new_state"),
    ],
)
def test_routing_key_from_the_type(ce_type: str, state: str | None, expected: str) -> None:
    """A reply_to copy's routing key is rebuilt from ce-type, ce-cluster and the current state.

    A state ONTAP invents is passed through whole, whatever it holds.
    """
    assert routing_key(ce_type, "c1", state) == expected
