"""The test doubles of the unit tests, one home for each: deliveries, the outbox, a terminal, a
scripted cluster and dispatcher for the scheduler."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from poller.dispatcher import Applied
from poller.errors import BrokerError
from poller.events import Envelope
from poller.models import Job, error_body
from poller.ontap import Answer
from poller.tracking import Gone, Observation, Seen
from poller.watch import Watch


@dataclass
class FakeDelivery:
    """A received watch request: counts its acks, and refuses one on a dead channel, as RabbitMQ would."""

    body: bytes = b""
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    message_id: str | None = None
    stale: bool = False
    acks: int = 0
    #: How it was settled, in order: "ack", "give_back".
    settled: list[str] = field(default_factory=list)
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    #: A timeline shared with a fake outbox, to check the order of broker operations.
    log: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        assert not self.stale, "ack on a dead channel"
        self.acks += 1
        self.settled.append("ack")
        self.log.append("ack")
        self.acked.set()

    async def give_back(self) -> None:
        self.settled.append("give_back")


@dataclass
class FakeOutbox:
    """The broker operations of the dispatcher, recorded; refusals and delays on demand."""

    log: list[str] = field(default_factory=list)
    events: list[Envelope] = field(default_factory=list)
    replies: list[tuple[str, Envelope]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    #: Publishes tried, refused ones included.
    attempts: int = 0
    #: The next publishes the broker refuses; ``fail_events`` refuses them all.
    failures: int = 0
    fail_events: bool = False
    #: Checkpoint copies the broker refuses.
    fail_requeue: bool = False
    #: Events of these states wait for ``gate`` before the broker "confirms" them.
    held_states: frozenset[str] = frozenset()
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0
    #: Called with each confirmed copy, as the broker would deliver it again (``tests.rig``).
    deliver_copy: Callable[[Watch, str], None] | None = None

    async def publish_event(self, envelope: Envelope) -> None:
        self.attempts += 1
        if self.fail_events or self.failures:
            self.failures = max(0, self.failures - 1)
            raise BrokerError("no confirm")
        if envelope.routing_key.rsplit(".", 1)[-1] in self.held_states:
            self.waiting += 1
            await self.gate.wait()
        self.events.append(envelope)
        self.log.append(f"event:{envelope.routing_key}")

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        self.replies.append((reply_to, envelope))
        self.log.append(f"reply:{reply_to}")

    async def requeue_watch(self, watch: Watch, value: str) -> None:
        if self.fail_requeue:
            raise BrokerError("copy not confirmed")
        self.checkpoints.append(json.loads(value))
        self.log.append("requeue")
        if self.deliver_copy is not None:
            self.deliver_copy(watch, value)

    def routing_keys(self) -> list[str]:
        return [e.routing_key for e in self.events]


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


#: ONTAP's answer to a uuid it does not know.
NOT_FOUND = error_body("entry doesn't exist", code="4", target="uuid")


@dataclass
class ScriptedCluster:
    """One cluster's ONTAP as the scheduler calls it (``scheduler.Reader``), scripted.

    Reads by uuid answer each job's record in ``jobs`` (a uuid missing there: 404); the feed's
    queries answer ``active`` and ``ends``, dated by the cluster's clock, ``behind_s`` behind the
    worker's. Every call is kept, with the worker's time it was made at. A gate in ``gates``
    (by endpoint: ``read``, ``active``, ``ends``) holds those calls until it is set. Like a call
    over the network, each one lets other tasks run before it answers.
    """

    clock: Callable[[], float]
    cluster: str = "c1"
    behind_s: float = 2 * 86400
    jobs: dict[str, Job] = field(default_factory=dict)
    active: list[Job] = field(default_factory=list)
    ends: list[Job] = field(default_factory=list)
    #: Raised by every read by uuid, and by every feed query.
    read_failure: BaseException | None = None
    query_failure: BaseException | None = None
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    #: (when, uuids read) and (when, endpoint) of every call, in order; the filters of each query.
    reads: list[tuple[float, list[str]]] = field(default_factory=list)
    queries: list[tuple[float, str]] = field(default_factory=list)
    filters: list[dict[str, str]] = field(default_factory=list)

    def hold(self, endpoint: str) -> asyncio.Event:
        """Calls to ``endpoint`` wait until the event returned is set."""
        gate = self.gates[endpoint] = asyncio.Event()
        return gate

    async def read(self, job_uuids: Sequence[str]) -> dict[str, Observation]:
        self.reads.append((self.clock(), list(job_uuids)))
        await asyncio.sleep(0)
        if "read" in self.gates:
            await self.gates["read"].wait()
        if self.read_failure is not None:
            raise self.read_failure
        return {u: Seen(self.jobs[u]) if u in self.jobs else Gone(NOT_FOUND) for u in job_uuids}

    async def query(self, filters: Mapping[str, str], *, endpoint: str) -> Answer:
        self.queries.append((self.clock(), endpoint))
        self.filters.append(dict(filters))
        await asyncio.sleep(0)
        if endpoint in self.gates:
            await self.gates[endpoint].wait()
        if self.query_failure is not None:
            raise self.query_failure
        jobs = self.active if endpoint == "active" else self.ends
        return Answer(list(jobs), self.clock() - self.behind_s)

    def read_uuids(self) -> list[list[str]]:
        return [uuids for _, uuids in self.reads]


@dataclass
class ScriptedSink:
    """The dispatcher's side of the scheduler (``handover.Sink``): every observation handed over,
    answered as ``answers`` say (then TAKEN), once ``gate`` (if any) is set; the jobs it holds
    watches of are ``held``."""

    answers: list[Applied] = field(default_factory=list)
    gate: asyncio.Event | None = None
    held: set[str] = field(default_factory=set)
    applied: list[tuple[str, Observation, bool]] = field(default_factory=list)
    reachable: list[dict[str, Any] | None] = field(default_factory=list)
    forgot_discovered: int = 0

    async def apply(
        self, job_uuid: str, observation: Observation, *, discovered: bool = False
    ) -> Applied:
        self.applied.append((job_uuid, observation, discovered))
        if self.gate is not None:
            await self.gate.wait()
        return self.answers.pop(0) if self.answers else Applied.TAKEN

    def note_reachable(self, error: dict[str, Any] | None) -> None:
        self.reachable.append(error)

    def forget_discovered(self) -> None:
        self.forgot_discovered += 1

    def holds(self, job_uuid: str) -> bool:
        return job_uuid in self.held
