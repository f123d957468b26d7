"""Pure core: what a new observation of a job means.

No I/O and no clock. Given what is known of a job (``Track``) and what the last read returned (an
``Observation``), ``step`` decides which event to publish and whether the job is over;
``next_read`` decides when a job read by uuid is read again. Everything here is tested with plain
tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from poller.models import FINAL_STATES, Job, error_body


class Outcome(StrEnum):
    """How a watch ends when ONTAP reports no end state for its job."""

    NOT_FOUND = "not_found"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Progress:
    """What has been published about one job. It travels in every checkpoint of its watches."""

    state: str | None = None
    #: ``n`` of the contract: state changes published so far (progress events do not count).
    changes: int = 0
    message: str | None = None
    #: The last job object seen, as ONTAP returned it: the body of ``watch.timeout``.
    job: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One event-worthy difference between two observations of a job."""

    kind: Literal["state", "progress"]
    job: Job
    state: str
    previous_state: str | None
    #: For a state change, ``n``; for progress, the ``n`` of the state it happens in.
    index: int


# Observations: what one poll of one job returned.
@dataclass(frozen=True, slots=True)
class Seen:
    job: Job


@dataclass(frozen=True, slots=True)
class Gone:
    """ONTAP answered 404: the job never existed, or it ended and was purged."""

    error: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refused:
    """ONTAP refused the call (401, 403, another 4xx): polling again will not help."""

    error: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unreachable:
    """Every retry of this poll failed; the job may still be fine."""

    error: dict[str, Any]
    #: ONTAP's last ``Retry-After``: the next poll never comes sooner.
    retry_after_s: float | None = None


Observation = Seen | Gone | Refused | Unreachable


@dataclass(frozen=True, slots=True)
class Policy:
    poll_interval_min_s: float
    poll_interval_max_s: float
    publish_progress: bool = False
    backoff_factor: float = 2.0


@dataclass(frozen=True, slots=True)
class Track:
    """What is known of one job between observations: what was published, and how reads went."""

    progress: Progress = field(default_factory=Progress)
    #: The last read failed for transient reasons: a deadline now ends the watch as ``error``.
    failing: bool = False
    last_error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """The decision for one observation."""

    track: Track
    change: Change | None = None
    #: The job reached an end state: ``change`` is its final event, and every watch ends.
    final: bool = False
    #: Every watch of the job ends without an end state, with this outcome and error body.
    outcome: Outcome | None = None
    error: dict[str, Any] | None = None


def is_final(state: str | None) -> bool:
    return state in FINAL_STATES


def observe(
    progress: Progress, job: Job, *, publish_progress: bool
) -> tuple[Progress, Change | None]:
    """Fold one job object into ``progress``; return the change worth an event, if any."""
    state, message = job.state, job.message
    seen = Progress(state=state, changes=progress.changes, message=message, job=job.raw)
    if state != progress.state:
        change = Change("state", job, state, progress.state, index=progress.changes)
        return replace(seen, changes=progress.changes + 1), change
    if publish_progress and message != progress.message and not is_final(state):
        return seen, Change("progress", job, state, state, index=progress.changes - 1)
    return seen, None


def step(track: Track, observation: Observation, *, publish_progress: bool) -> Step:
    """Decide what ``observation`` means for the job known as ``track``."""
    match observation:
        case Seen(job):
            progress, change = observe(track.progress, job, publish_progress=publish_progress)
            return Step(Track(progress), change=change, final=is_final(progress.state))
        case Gone(error):
            return Step(track, outcome=Outcome.NOT_FOUND, error=error)
        case Refused(error):
            return Step(track, outcome=Outcome.ERROR, error=error)
        case Unreachable(error):
            # Keep what was known, and remember the failure for a deadline that passes now.
            return Step(replace(track, failing=True, last_error=error))
    raise AssertionError(f"unknown observation {observation!r}")  # pragma: no cover, no mutate


def ends_watches(observation: Observation) -> bool:
    """The job reached an end state, or is gone, or ONTAP refused: its watches end now."""
    if isinstance(observation, Seen):
        return is_final(observation.job.state)
    return isinstance(observation, Gone | Refused)


def next_interval(previous_s: float | None, *, moved: bool, policy: Policy) -> float:
    """Read soon after a change, then back off geometrically up to the cap."""
    if previous_s is None or moved:
        return policy.poll_interval_min_s
    return min(previous_s * policy.backoff_factor, policy.poll_interval_max_s)


def next_read(
    interval_s: float | None, observation: Observation, *, moved: bool, policy: Policy
) -> tuple[float, float]:
    """``(interval, delay)`` after a read: the backoff, and when to read that job again.

    A failed read backs off as an unchanged job does, and never comes sooner than ONTAP's
    ``Retry-After``; the backoff itself is not stretched by it.
    """
    if isinstance(observation, Unreachable):
        interval = next_interval(interval_s, moved=False, policy=policy)
        return interval, max(interval, observation.retry_after_s or 0.0)
    interval = next_interval(interval_s, moved=moved, policy=policy)
    return interval, interval


def expire(track: Track) -> tuple[Outcome, dict[str, Any]]:
    """A watch's deadline passed: ``timeout`` with the last job, or ``error`` if ONTAP was failing."""
    if track.failing:
        return Outcome.ERROR, {"error": track.last_error or error_body("ONTAP unreachable")}
    if track.progress.job is not None:
        return Outcome.TIMEOUT, track.progress.job
    return Outcome.TIMEOUT, {"error": error_body("deadline passed before the job was read")}
