"""In-memory model of ONTAP jobs: each job follows a timeline of states, read against a clock.

Nothing here runs in the background. A job's state, its times and its purge are computed from
the clock at the moment it is read, so a test can move a fake clock and see exactly what ONTAP
would show at that instant.
"""

from __future__ import annotations

import time
import uuid as uuid_lib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from poller.simulator.faults import Fault, FaultInjector, FaultPlan

# Some ONTAP releases also report cancelled and expired; all four end a job.
FINAL_STATES = frozenset({"success", "failure", "cancelled", "expired"})
JOBS_PATH = "/api/cluster/jobs"

DOCUMENTED_FIELDS = frozenset(
    {"_links", "code", "description", "end_time", "message", "start_time", "state", "uuid"}
)

EndpointKind = Literal["single", "collection"]
Clock = Callable[[], float]


class OntapError(Exception):
    """An ONTAP error answer: status and the documented `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, code: str, target: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if target is not None:
            self.body["target"] = target


def not_found() -> OntapError:
    """The documented answer for an unknown or purged job."""
    # A fresh instance each time: a shared one would pile up tracebacks as it is re-raised.
    return OntapError(404, "entry doesn't exist", "4", target="uuid")


def not_authorized(status: int = 401) -> OntapError:
    """ONTAP's answer to refused credentials."""
    return OntapError(status, "not authorized for that command", "6")


def requested_fields(
    values: Sequence[str], default: frozenset[str] | None
) -> frozenset[str] | None:
    """The fields named by `fields` query values (comma-separated); None means all of them."""
    names = {name.strip() for value in values for name in value.split(",") if name.strip()}
    if not names:
        return default
    if "*" in names:
        return None
    unknown = sorted(names - DOCUMENTED_FIELDS)
    if unknown:
        # Strict on purpose: a misspelt field would otherwise silently go missing.
        raise OntapError(400, f'Unexpected argument "{unknown[0]}".', "262179", target=unknown[0])
    return frozenset(names)


def select_fields(
    record: dict[str, Any], wanted: frozenset[str] | None, always: set[str]
) -> dict[str, Any]:
    """The record cut down to the wanted fields (None: all) and those always shown."""
    if wanted is None:
        return record
    keep = wanted | always
    return {name: value for name, value in record.items() if name in keep}


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


def iso_time(epoch: float) -> str:
    """ONTAP's time format: ISO-8601, whole seconds, with offset."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


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

    def reached(self, now: float) -> list[Step]:
        """The steps in effect at or before `now` (never empty: a step is at 0)."""
        return [step for step in self.steps if self.created_at + step.after <= now]

    def ended_at(self) -> float | None:
        """When the job enters its final state, if its timeline has one."""
        last = self.steps[-1]
        return self.created_at + last.after if last.state in FINAL_STATES else None

    def purged(self, now: float, purge_after_s: float) -> bool:
        """Whether ONTAP has deleted the job by `now`."""
        ended = self.ended_at()
        return ended is not None and now >= ended + purge_after_s

    def transitions(self, now: float) -> list[Transition]:
        """Each change of state reached by `now`; a new message alone is not a transition."""
        changes: list[Transition] = []
        for step in self.reached(now):
            if not changes or changes[-1].state != step.state:
                changes.append(Transition(step.state, self.created_at + step.after))
        return changes

    def as_ontap(self, now: float) -> dict[str, Any]:
        """The full job object as ONTAP shows it at `now`, leaving out fields without a value."""
        reached = self.reached(now)
        current = reached[-1]
        record: dict[str, Any] = {
            "_links": {"self": {"href": f"{JOBS_PATH}/{self.uuid}"}},
            "code": current.code if current.code is not None else 0,
            "description": self.description,
            "state": current.state,
            "uuid": self.uuid,
        }
        if current.message is not None:
            record["message"] = current.message
        started = next((step for step in reached if step.state != "queued"), None)
        if started is not None:
            record["start_time"] = iso_time(self.created_at + started.after)
        if current.state in FINAL_STATES:
            record["end_time"] = iso_time(self.created_at + current.after)
        return record


@dataclass
class Stats:
    """Counts of ONTAP requests, for benchmarks and tests."""

    requests: int = 0
    single: int = 0
    collection: int = 0
    by_status: Counter[str] = field(default_factory=Counter)

    def count(self, kind: EndpointKind, status: int | str) -> None:
        """Record one request; `status` is the HTTP status, or "dropped"."""
        self.requests += 1
        if kind == "single":
            self.single += 1
        else:
            self.collection += 1
        self.by_status[str(status)] += 1

    def as_json(self) -> dict[str, Any]:
        """The counts as the control endpoint shows them."""
        return {
            "requests": self.requests,
            "single": self.single,
            "collection": self.collection,
            "by_status": dict(sorted(self.by_status.items())),
        }


class DuplicateJobError(ValueError):
    """A job with that UUID exists already."""


class Simulator:
    """State of one simulated cluster: its jobs, credentials, fault plan and request counts."""

    def __init__(
        self,
        username: str = "admin",
        password: str = "netapp1!",  # noqa: S107 - the simulator's well-known demo password
        purge_after_s: float = 300.0,
        clock: Clock = time.time,
        faults: FaultPlan | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.purge_after_s = purge_after_s
        self.clock = clock
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

    def page_jobs(
        self, uuids: Sequence[str] | None, offset: int, limit: int
    ) -> tuple[list[Job], int | None]:
        """Up to `limit` visible jobs from position `offset`, and where the next page starts.

        Positions count the requested UUIDs, or all jobs ever created in creation order,
        purged or not, so a purge between two pages neither skips nor repeats a job.
        """
        candidates = list(uuids) if uuids is not None else list(self._jobs)
        found: list[Job] = []
        for position in range(offset, len(candidates)):
            job = self.find_job(candidates[position])
            if job is None:
                continue
            if len(found) == limit:
                return found, position
            found.append(job)
        return found, None

    def job_object(self, job: Job) -> dict[str, Any]:
        """The job's full ONTAP object now."""
        return job.as_ontap(self.clock())

    def transitions(self, uuid: str) -> tuple[Job, list[Transition]] | None:
        """The job (purged or not) and its transitions so far; None if it was never created."""
        job = self._jobs.get(uuid.lower())
        return None if job is None else (job, job.transitions(self.clock()))

    def clear_jobs(self) -> int:
        """Forget every job; return how many there were."""
        count = len(self._jobs)
        self._jobs.clear()
        return count
