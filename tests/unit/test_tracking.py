"""The pure core: what each observation of a job means."""

from __future__ import annotations

from typing import Any

import pytest

from poller.models import Job, error_body
from poller.tracking import (
    Gone,
    Outcome,
    Policy,
    Progress,
    Refused,
    Seen,
    Step,
    Track,
    Unreachable,
    expire,
    next_interval,
    next_read,
    observe,
    step,
)

UUID = "1cd8a442-86d1-11e0-ae1c-123478563412"
POLICY = Policy(poll_interval_min_s=1.0, poll_interval_max_s=30.0)


def job(state: str, message: str | None = None, **extra: Any) -> Job:
    raw: dict[str, Any] = {"uuid": UUID, "state": state, **extra}
    if message is not None:
        raw["message"] = message
    return Job(raw)


def run(observations: list[Any], policy: Policy = POLICY) -> list[Step]:
    """Fold observations through ``step`` as the dispatcher does, keeping every step."""
    track, steps = Track(), []
    for observation in observations:
        result = step(track, observation, publish_progress=policy.publish_progress)
        steps.append(result)
        track = result.track
    return steps


def reads(observations: list[Any], policy: Policy = POLICY) -> list[tuple[float, float]]:
    """``(delay, interval)`` after each read by uuid, as the scheduler backs off."""
    interval: float | None = None
    last: tuple[str, str | None] | None = None
    out = []
    for observation in observations:
        moved = False
        if isinstance(observation, Seen):
            key = (observation.job.state, observation.job.message)
            moved, last = key != last, key
        interval, delay = next_read(interval, observation, moved=moved, policy=policy)
        out.append((delay, interval))
    return out


def events(steps: list[Step]) -> list[tuple[str, str, str | None, int]]:
    return [
        (s.change.kind, s.change.state, s.change.previous_state, s.change.index)
        for s in steps
        if s.change is not None
    ]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param(
            ["queued", "running", "success"],
            [
                ("state", "queued", None, 0),
                ("state", "running", "queued", 1),
                ("state", "success", "running", 2),
            ],
            id="queued-running-success",
        ),
        pytest.param(
            ["running", "running", "running", "failure"],
            [("state", "running", None, 0), ("state", "failure", "running", 1)],
            id="unchanged-polls-publish-nothing",
        ),
        pytest.param(
            ["running", "paused", "running", "success"],
            [
                ("state", "running", None, 0),
                ("state", "paused", "running", 1),
                ("state", "running", "paused", 2),
                ("state", "success", "running", 3),
            ],
            id="paused-then-running-again",
        ),
        pytest.param(
            ["queued", "vserver_busy", "success"],
            [
                ("state", "queued", None, 0),
                ("state", "vserver_busy", "queued", 1),
                ("state", "success", "vserver_busy", 2),
            ],
            id="unknown-state-passed-through",
        ),
        pytest.param(["success"], [("state", "success", None, 0)], id="final-at-first-look"),
        pytest.param(
            ["RUNNING", "Success"],
            [("state", "running", None, 0), ("state", "success", "running", 1)],
            id="case-folded",
        ),
    ],
)
def test_state_changes_publish_one_event_each(states: list[str], expected: list[Any]) -> None:
    """The first observation and every later change of state publish exactly one event."""
    assert events(run([Seen(job(s)) for s in states])) == expected


@pytest.mark.parametrize(
    ("states", "final_at"),
    [
        (["queued", "running", "success"], 2),
        (["running", "failure"], 1),
        (["running", "cancelled"], 1),
        (["queued", "expired"], 1),
        (["success"], 0),
        (["running", "paused", "running"], None),
        (["running", "vserver_busy"], None),
    ],
)
def test_only_end_states_are_final(states: list[str], final_at: int | None) -> None:
    """success, failure, cancelled and expired end the watch; any other state keeps polling."""
    finals = [i for i, s in enumerate(run([Seen(job(s)) for s in states])) if s.final]
    assert finals == ([] if final_at is None else [final_at])


def test_progress_events_only_when_enabled() -> None:
    """A new message in the same state is a progress event only with publish_progress."""
    observations = [
        Seen(job("running", "10%")),
        Seen(job("running", "60%")),
        Seen(job("success", "done")),
    ]
    quiet = events(run(observations))
    chatty = events(run(observations, Policy(1.0, 30.0, publish_progress=True)))
    assert quiet == [("state", "running", None, 0), ("state", "success", "running", 1)]
    assert chatty == [
        ("state", "running", None, 0),
        ("progress", "running", "running", 0),
        ("state", "success", "running", 1),
    ]


def test_progress_does_not_count_as_a_change_of_state() -> None:
    """n counts changes of state only, so progress events never shift later ids."""
    steps = run(
        [Seen(job("running", "a")), Seen(job("running", "b")), Seen(job("success"))],
        Policy(1.0, 30.0, publish_progress=True),
    )
    assert steps[-1].track.progress.changes == 2
    assert steps[-1].change is not None and steps[-1].change.index == 1


@pytest.mark.parametrize(
    ("previous", "moved", "expected"),
    [
        (None, False, 1.0),
        (1.0, False, 2.0),
        (8.0, False, 16.0),
        (16.0, False, 30.0),
        (30.0, False, 30.0),
        (30.0, True, 1.0),
    ],
)
def test_backoff_grows_to_the_cap_and_resets_on_change(
    previous: float | None, moved: bool, expected: float
) -> None:
    """poll_interval_min after a change, doubling up to poll_interval_max otherwise."""
    assert next_interval(previous, moved=moved, policy=POLICY) == expected


def test_a_changed_message_resets_the_backoff_even_without_progress_events() -> None:
    """A moving job is polled sooner, whether or not its progress is published."""
    polled = reads(
        [Seen(job("running", "a")), Seen(job("running", "a")), Seen(job("running", "b"))]
    )
    assert [delay for delay, _ in polled] == [1.0, 2.0, 1.0]


def test_a_job_that_vanishes_after_being_seen_ends_as_not_found() -> None:
    """404 after the job was seen running: not_found, with the last state kept for the event."""
    error = error_body("entry doesn't exist", code="4", target="uuid")
    steps = run([Seen(job("running")), Gone(error)])
    assert steps[-1].outcome is Outcome.NOT_FOUND
    assert steps[-1].error == error
    assert steps[-1].track.progress.state == "running"
    assert steps[-1].change is None and not steps[-1].final


def test_refused_ends_every_watch_as_error() -> None:
    """401/403 end the watch at once with ONTAP's error object."""
    error = {"message": "not authorized for that command", "code": "6"}
    (result,) = run([Refused(error)])
    assert result.outcome is Outcome.ERROR and result.error == error


def test_unreachable_keeps_polling_with_backoff_and_remembers_the_failure() -> None:
    """A failed poll changes nothing published; it backs off and marks the job as failing."""
    observations = [
        Seen(job("running")),
        Unreachable(error_body("ConnectError")),
        Unreachable(error_body("x")),
    ]
    steps = run(observations)
    assert [s.outcome for s in steps] == [None, None, None]
    assert [delay for delay, _ in reads(observations)] == [1.0, 2.0, 4.0]
    assert steps[-1].track.failing
    assert steps[-1].track.progress.state == "running"


def test_a_good_answer_clears_the_failure() -> None:
    """After ONTAP answers again, a deadline means timeout, not error."""
    steps = run([Unreachable(error_body("x")), Seen(job("running"))])
    assert not steps[-1].track.failing


@pytest.mark.parametrize(
    ("track", "outcome", "body_key"),
    [
        (
            Track(progress=Progress("running", 1, None, {"uuid": UUID, "state": "running"})),
            Outcome.TIMEOUT,
            "state",
        ),
        (Track(failing=True, last_error=error_body("ConnectError")), Outcome.ERROR, "error"),
        (Track(), Outcome.TIMEOUT, "error"),
    ],
    ids=["answering", "failing", "never-read"],
)
def test_deadline_outcome(track: Track, outcome: Outcome, body_key: str) -> None:
    """timeout carries the last job; error the last failure; never-read jobs an error object."""
    got, body = expire(track)
    assert got is outcome
    assert body_key in body


def test_resuming_from_progress_continues_the_count() -> None:
    """A watch resumed from a checkpoint names the next change with the saved n."""
    resumed = Track(progress=Progress(state="running", changes=2))
    result = step(resumed, Seen(job("success")), publish_progress=False)
    assert result.change is not None
    assert (result.change.index, result.change.previous_state) == (2, "running")


def test_observe_keeps_the_job_as_returned() -> None:
    """The body published is ONTAP's object, unchanged (original letter case included)."""
    raw = job("Running", "x", code=0, _links={"self": {"href": "/api/cluster/jobs/1"}})
    progress, change = observe(Progress(), raw, publish_progress=False)
    assert change is not None and change.job.raw is raw.raw
    assert progress.job == raw.raw


def test_retry_after_delays_the_next_poll() -> None:
    """After ONTAP's Retry-After the job is not polled sooner than it asked."""
    polled = reads([Seen(job("running")), Unreachable(error_body("HTTP 503"), retry_after_s=20.0)])
    assert polled[-1] == (20.0, 2.0)  # the backoff itself is unchanged


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        pytest.param(
            [("running", "a"), ("running", "a"), ("running", "a")],
            [("state", "running", None, 0)],
            id="same-message-again-is-not-progress",
        ),
        pytest.param(
            [("running", "a"), ("running", "b"), ("running", "b"), ("running", "c")],
            [
                ("state", "running", None, 0),
                ("progress", "running", "running", 0),
                ("progress", "running", "running", 0),
            ],
            id="each-new-message-once",
        ),
        pytest.param(
            [("queued", None), ("running", "a"), ("running", "b")],
            [
                ("state", "queued", None, 0),
                ("state", "running", "queued", 1),
                ("progress", "running", "running", 1),
            ],
            id="progress-takes-the-n-of-its-state",
        ),
        pytest.param(
            [("success", "done"), ("success", "cleaned up")],
            [("state", "success", None, 0)],
            id="no-progress-after-an-end",
        ),
    ],
)
def test_progress_events_follow_new_messages_only(
    observations: list[tuple[str, str | None]], expected: list[Any]
) -> None:
    """With publish_progress, a message differing from the last one seen is one progress event."""
    policy = Policy(1.0, 30.0, publish_progress=True)
    assert events(run([Seen(job(s, m)) for s, m in observations], policy)) == expected


def test_the_progress_remembers_the_last_message_and_job() -> None:
    """The checkpoint carries the last message and job object, whether or not the state moved."""
    steps = run([Seen(job("running", "a")), Seen(job("running", "b", code=0))])
    assert steps[-1].track.progress == Progress(
        "running", 1, "b", {"uuid": UUID, "state": "running", "message": "b", "code": 0}
    )


@pytest.mark.parametrize(
    ("observations", "body"),
    [
        pytest.param(
            [Unreachable(error_body("ConnectError: refused"))],
            {"error": {"message": "ConnectError: refused", "code": "0"}},
            id="failing-keeps-the-last-error",
        ),
        pytest.param(
            [Seen(job("running", "half")), Unreachable(error_body("HTTP 503", code="503"))],
            {"error": {"message": "HTTP 503", "code": "503"}},
            id="failing-after-an-answer",
        ),
        pytest.param(
            [Seen(job("paused", "Waiting"))],
            {"uuid": UUID, "state": "paused", "message": "Waiting"},
            id="answering-gives-the-last-job",
        ),
        pytest.param(
            [],
            {"error": {"message": "deadline passed before the job was read", "code": "0"}},
            id="never-read",
        ),
    ],
)
def test_the_body_of_a_deadline_event(observations: list[Any], body: dict[str, Any]) -> None:
    """watch.error carries ONTAP's last error, watch.timeout the last job (or says none was read)."""
    track = run(observations)[-1].track if observations else Track()
    assert expire(track)[1] == body


def test_a_failing_track_without_an_error_is_still_an_error_object() -> None:
    """A failure known without ONTAP's words still ends in the documented error shape."""
    assert expire(Track(failing=True)) == (
        Outcome.ERROR,
        {"error": {"message": "ONTAP unreachable", "code": "0"}},
    )


@pytest.mark.parametrize(
    ("retry_after_s", "expected"),
    [(None, (0.1, 0.1)), (0.0, (0.1, 0.1)), (0.07, (0.1, 0.1)), (0.5, (0.1, 0.5))],
)
def test_a_failed_read_waits_its_backoff_or_retry_after_whichever_is_longer(
    retry_after_s: float | None, expected: tuple[float, float]
) -> None:
    """Sub-second intervals stay sub-second when ONTAP sends no (or a shorter) Retry-After."""
    policy = Policy(poll_interval_min_s=0.05, poll_interval_max_s=0.2)
    failed = Unreachable(error_body("HTTP 503"), retry_after_s=retry_after_s)
    assert next_read(0.05, failed, moved=True, policy=policy) == expected
