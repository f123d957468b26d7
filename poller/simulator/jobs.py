"""In-memory model of ONTAP jobs: each job follows a timeline of states, read against a clock.

Nothing here runs in the background. A job's state, its times and its purge are computed from
the clock at the moment it is read, so a test can move a fake clock and see exactly what ONTAP
would show at that instant.
"""

from __future__ import annotations

import bisect
import math
import secrets
import time
import uuid as uuid_lib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from itertools import islice
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from poller.simulator.cluster import ClusterConfig, render_instant
from poller.simulator.faults import Fault, FaultInjector, FaultPlan
from poller.simulator.query import CollectionQuery, Value
from poller.simulator.shapes import JOBS_PATH
from poller.simulator.stats import Stats

# Some ONTAP releases also report cancelled and expired; all four end a job.
FINAL_STATES = frozenset({"success", "failure", "cancelled", "expired"})

Clock = Callable[[], float]


class Step(BaseModel):
    """From `after` seconds past its creation on, the job shows this state and message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after: float = Field(ge=0.0, allow_inf_nan=False)
    state: str = Field(min_length=1)
    message: str | None = None
    code: int | None = None


DEFAULT_TIMELINE = (
    Step(after=0.0, state="queued", message="Queued"),
    Step(after=1.0, state="running", message="Running"),
    Step(after=3.0, state="success", message="Complete: Successful"),
)


class JobSpec(BaseModel):
    """A job to create; every field may be left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uuid: str | None = None
    description: str = "Simulated Job"
    timeline: tuple[Step, ...] | None = None

    @field_validator("uuid")
    @classmethod
    def _canonical_uuid(cls, value: str | None) -> str | None:
        # ONTAP prints UUIDs in lower case; matching is done on that form.
        return None if value is None else str(uuid_lib.UUID(value))

    @field_validator("timeline")
    @classmethod
    def _well_formed(cls, steps: tuple[Step, ...] | None) -> tuple[Step, ...] | None:
        return None if steps is None else normalise_timeline(steps)


def normalise_timeline(steps: Iterable[Step]) -> tuple[Step, ...]:
    """Sort steps by time, start queued when no step is at 0, and end at the first final state."""
    ordered = sorted(steps, key=lambda step: step.after)  # stable: equal times keep their order
    if not ordered or ordered[0].after > 0:
        ordered.insert(0, Step(after=0.0, state="queued", message="Queued"))
    for step in ordered[:-1]:
        if step.state in FINAL_STATES:
            # ONTAP never leaves a final state; a later step would make purge ambiguous.
            raise ValueError(f"no step may follow the final state {step.state!r}")
    return tuple(ordered)


@dataclass(frozen=True)
class Transition:
    """When (wall clock) the job entered a state."""

    state: str
    at: float


@dataclass(frozen=True)
class Job:
    """A job and its timeline; what it shows depends only on the time it is read at."""

    uuid: str
    description: str
    created_at: float
    steps: tuple[Step, ...]
    # Derived once, so that reading a job at an instant costs a bisection at most: a feed
    # query reads every job of the cluster.
    times: tuple[float, ...] = field(init=False, repr=False, compare=False)
    started_at: float | None = field(init=False, repr=False, compare=False)
    ended_at: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        times = tuple(self.created_at + step.after for step in self.steps)
        started = next(
            (t for t, s in zip(times, self.steps, strict=True) if s.state != "queued"), None
        )
        final = self.steps[-1].state in FINAL_STATES
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "started_at", started)
        object.__setattr__(self, "ended_at", times[-1] if final else None)

    def step_at(self, now: float) -> Step:
        """The step in effect at `now` (the first one, before the job exists)."""
        return self.steps[max(bisect.bisect_right(self.times, now) - 1, 0)]

    def started_by(self, now: float) -> float | None:
        """When the job left `queued`, if it had by `now`."""
        started = self.started_at
        return started if started is not None and started <= now else None

    def ended_by(self, now: float) -> float | None:
        """When the job reached its final state, if it had by `now`."""
        ended = self.ended_at
        return ended if ended is not None and ended <= now else None

    def purged(self, now: float, purge_after_s: float) -> bool:
        """Whether ONTAP has deleted the job by `now`."""
        return self.ended_at is not None and now >= self.ended_at + purge_after_s

    def transitions(self, now: float) -> list[Transition]:
        """Each change of state reached by `now`; a new message alone is not a transition."""
        changes: list[Transition] = []
        reached = bisect.bisect_right(self.times, now)
        for step, at in zip(self.steps[:reached], self.times, strict=False):
            if not changes or changes[-1].state != step.state:
                changes.append(Transition(step.state, at))
        return changes

    def as_ontap(
        self, now: float, offset_s: float, zone: tzinfo, fields: frozenset[str] | None = None
    ) -> dict[str, Any]:
        """The job object as ONTAP shows it at `now`, leaving out fields without a value.

        Times are shown on the cluster's clock (`offset_s` ahead of the simulator's) in `zone`.
        `fields` limits the object to those fields, `_links` and `uuid` (None: all of them);
        times are rendered only when asked for, as a feed poll may render 10,000 records.
        """
        step = self.step_at(now)
        record: dict[str, Any] = {
            "_links": {"self": {"href": f"{JOBS_PATH}/{self.uuid}"}},
            "uuid": self.uuid,
        }
        values: dict[str, Any] = {
            "code": step.code if step.code is not None else 0,
            "description": self.description,
            "state": step.state,
            "message": step.message,
            "start_time": self.started_by(now),
            "end_time": self.ended_by(now),
        }
        for name, value in values.items():
            if value is None or (fields is not None and name not in fields):
                continue
            is_time = name in ("start_time", "end_time")
            record[name] = render_instant(value + offset_s, zone) if is_time else value
        return record


def _cluster_time(at: float | None, offset_s: float) -> int | None:
    # Whole seconds, as ONTAP renders them: a time read from a record matches itself in a query.
    return None if at is None else math.floor(at + offset_s)


# Each filterable field of a job at `now`, as the query grammar compares it: strings, codes,
# and times as whole epoch seconds on the cluster's clock (`offset_s` ahead).
VALUE_OF: dict[str, Callable[[Job, float, float], Value]] = {
    "code": lambda job, now, _: job.step_at(now).code or 0,
    "description": lambda job, _now, _: job.description,
    "end_time": lambda job, now, offset_s: _cluster_time(job.ended_by(now), offset_s),
    "message": lambda job, now, _: job.step_at(now).message,
    "start_time": lambda job, now, offset_s: _cluster_time(job.started_by(now), offset_s),
    "state": lambda job, now, _: job.step_at(now).state,
    "uuid": lambda job, _now, _: job.uuid,
}


class DuplicateJobError(ValueError):
    """A job with that UUID exists already."""


class Simulator:
    """State of one simulated cluster: jobs, credentials, settings, fault plan, request counts."""

    def __init__(
        self,
        username: str = "admin",
        password: str = "netapp1!",  # noqa: S107 - the simulator's well-known demo password
        purge_after_s: float = 300.0,
        clock: Clock = time.time,
        faults: FaultPlan | None = None,
        *,
        users: Mapping[str, str] | None = None,
        clock_offset_s: float = 0.0,
        timezone: str = "UTC",
        refuse_filters: bool = False,
        max_page: int | None = None,
    ) -> None:
        """Raises ValueError for an impossible setting (say, an unknown time zone)."""
        self.username = username
        self.password = password
        self.users = dict(users or {})  # more basic-auth users, name -> password
        if self.users.get(username, password) != password:
            raise ValueError(f"user {username!r} is given two passwords")
        self.purge_after_s = purge_after_s
        self.clock = clock
        self.config = ClusterConfig(
            clock_offset_s=clock_offset_s,
            timezone=timezone,
            refuse_filters=refuse_filters,
            max_page=max_page,
        )
        self.stats = Stats()
        self._injector = FaultInjector(faults)
        # Purged jobs stay here, hidden from the ONTAP endpoints, so that their transitions
        # remain readable for latency measurements until the jobs are cleared.
        self._jobs: dict[str, Job] = {}

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force."""
        return self._injector.plan

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        # A new plan restarts its random sequence, so a seeded plan replays from the start.
        self._injector = FaultInjector(plan)

    def decide_fault(self) -> Fault:
        """The fault, if any, for the next ONTAP request."""
        return self._injector.decide()

    def configure(self, **changes: Any) -> ClusterConfig:
        """Change some of the cluster's settings, checked as PATCH /_sim/config checks them.

        Raises pydantic.ValidationError (a ValueError) and changes nothing when one cannot be.
        """
        self.config = ClusterConfig.model_validate({**self.config.model_dump(), **changes})
        return self.config

    def cluster_now(self) -> float:
        """The cluster's clock: the simulator's, shifted by the configured offset."""
        return self.clock() + self.config.clock_offset_s

    def authenticate(self, username: str, password: str) -> str | None:
        """The user these basic-auth credentials belong to, or None."""
        matched = None
        for name, secret in {self.username: self.password, **self.users}.items():
            # Every pair is compared in full, without a short cut, so that the answer time
            # says nothing about which user exists or which part was wrong.
            same_name = secrets.compare_digest(username.encode(), name.encode())
            same_secret = secrets.compare_digest(password.encode(), secret.encode())
            if same_name & same_secret:
                matched = name
        return matched

    def create_job(
        self,
        uuid: str | None = None,
        description: str = "Simulated Job",
        timeline: Sequence[Step | Mapping[str, Any]] | None = None,
    ) -> str:
        """Create one job and return its UUID (lower case)."""
        spec = JobSpec.model_validate(
            {"uuid": uuid, "description": description, "timeline": timeline}
        )
        return self.create_jobs([spec])[0].uuid

    def create_jobs(self, specs: Sequence[JobSpec]) -> list[Job]:
        """Create several jobs at once: all of them, or none when a UUID is taken."""
        uuids = [spec.uuid or str(uuid_lib.uuid4()) for spec in specs]
        taken = [uuid for uuid in uuids if uuid in self._jobs]
        if taken or len(set(uuids)) != len(uuids):
            raise DuplicateJobError(f"job UUID already in use: {(taken or uuids)[0]}")
        now = self.clock()
        jobs = [
            Job(uuid, spec.description, now, spec.timeline or DEFAULT_TIMELINE)
            for uuid, spec in zip(uuids, specs, strict=True)
        ]
        self._jobs.update((job.uuid, job) for job in jobs)
        return jobs

    def find_job(self, uuid: str) -> Job | None:
        """The job as the ONTAP endpoints see it: None when unknown or purged."""
        job = self._jobs.get(uuid.lower())
        if job is None or job.purged(self.clock(), self.purge_after_s):
            return None
        return job

    def job_object(self, job: Job) -> dict[str, Any]:
        """The job's full ONTAP object now, its times on the cluster's clock and in its zone."""
        return job.as_ontap(self.clock(), self.config.clock_offset_s, self.config.zone)

    def list_jobs(self, query: CollectionQuery) -> tuple[list[dict[str, Any]], int | None]:
        """One page of the collection: its records, and the offset of the next page (or None).

        Offsets are positions among the requested UUIDs, or among all jobs ever created in
        creation order, purged or not, so a purge between two pages neither skips nor repeats
        a job. A page holds at most `max_records` records, and never more than `max_page`.
        """
        now, config = self.clock(), self.config
        offset_s, zone = config.clock_offset_s, config.zone
        limit = min(query.max_records, config.max_page or query.max_records)
        tests = [(VALUE_OF[condition.field], condition.matches) for condition in query.conditions]

        def passes(job: Job) -> bool:
            for value_of, matches in tests:  # noqa: SIM110 - a loop: no generator per job
                if not matches(value_of(job, now, offset_s)):
                    return False
            return True

        found: list[Job] = []
        next_offset = None
        for position, job in enumerate(self._candidates(query.uuids, query.offset), query.offset):
            if job is None or job.purged(now, self.purge_after_s) or not passes(job):
                continue
            if len(found) == limit:
                next_offset = position  # a job that passes: a `next` link never leads nowhere
                break
            found.append(job)
        records = [job.as_ontap(now, offset_s, zone, query.fields) for job in found]
        return records, next_offset

    def _candidates(self, uuids: list[str] | None, offset: int) -> Iterator[Job | None]:
        if uuids is None:
            return islice(self._jobs.values(), offset, None)
        return (self._jobs.get(uuid) for uuid in islice(uuids, offset, None))

    def transitions(self, uuid: str) -> tuple[Job, list[Transition]] | None:
        """The job (purged or not) and its transitions so far; None if it was never created."""
        job = self._jobs.get(uuid.lower())
        return None if job is None else (job, job.transitions(self.clock()))

    def clear_jobs(self) -> int:
        """Forget every job; return how many there were."""
        count = len(self._jobs)
        self._jobs.clear()
        return count
