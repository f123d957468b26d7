"""One watch's broker operations: its end, its checkpoint, its replies, its acknowledgement."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from poller.errors import BrokerError
from poller.events import Envelope, job_event
from poller.models import Job, WatchRequest, error_body
from poller.settling import Settler
from poller.tracecontext import TraceContext
from poller.tracking import Change, Outcome, Progress, Track
from poller.watch import Record, Watch
from tests.fakes import FakeDelivery, FakeOutbox

UUID = "1cd8a442-86d1-11e0-ae1c-123478563412"
NOW = 1_700_000_000.0
NOW_ISO = "2023-11-14T22:13:20Z"
TRACE = TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "congo=t61")
JOB = {"uuid": UUID, "state": "running", "message": "half"}


@dataclass
class RefusingDelivery(FakeDelivery):
    """A delivery whose channel refuses the acknowledgement."""

    async def ack(self) -> None:
        raise BrokerError("channel closed")


class RefusingOutbox(FakeOutbox):
    """An outbox whose broker refuses the replies to ``reply_to``."""

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        raise BrokerError("reply not confirmed")


def make_watch(delivery: FakeDelivery | None = None, watch_id: str = "w1", **fields: Any) -> Watch:
    delivery = delivery or FakeDelivery()
    watch = Watch(
        watch_id=watch_id,
        request=WatchRequest(UUID, "c1", None),
        delivery=delivery,
        deadline_at=1_800_000_000.5,
        held_since=NOW,
        key=delivery.correlation_id or watch_id,
    )
    for name, value in fields.items():
        setattr(watch, name, value)
    return watch


def make(
    *watches: Watch,
    outbox: FakeOutbox | None = None,
    progress: Progress | None = None,
    discovered: bool = False,
) -> tuple[Settler, FakeOutbox, Record, list[str]]:
    outbox = outbox or FakeOutbox()
    idle: list[str] = []
    settler = Settler("c1", outbox, on_idle=idle.append, clock=lambda: NOW)
    record = Record(UUID, Track(progress or Progress()), discovered=discovered)
    for watch in watches:
        record.watches[watch.watch_id] = watch
    return settler, outbox, record, idle


def ce_id(outcome: str, key: str) -> str:
    """The contract's id of a watch's end, written out apart from the package."""
    name = f"ontap-job-poller:c1/{UUID}/watch/{outcome}/{key}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


async def test_a_watch_ends_with_its_own_event_then_its_ack() -> None:
    """watch.<cluster>.<outcome>: the watch's key, correlation_id, trace and last state, then ack."""
    delivery = FakeDelivery(correlation_id="corr-1", reply_to="r1")
    watch = make_watch(delivery, trace=TRACE)
    settler, outbox, record, idle = make(watch, progress=Progress("running", 1, "half", JOB))
    delivery.log = outbox.log

    with capture_logs() as logs:
        await settler.end_watch(record, watch, Outcome.TIMEOUT, JOB)

    (event,) = outbox.events
    assert event.routing_key == "watch.c1.timeout"
    assert event.correlation_id == "corr-1"
    assert event.headers == {
        "ce-specversion": "1.0",
        "ce-id": ce_id("timeout", "corr-1"),
        "ce-source": "/clusters/c1",
        "ce-type": "ontap.watch.timeout",
        "ce-subject": UUID,
        "ce-time": NOW_ISO,
        "ce-cluster": "c1",
        "ce-previousstate": "running",
        "ce-traceparent": TRACE.traceparent,
        "ce-tracestate": "congo=t61",
    }
    assert json.loads(event.body) == JOB
    assert [(to, e.correlation_id) for to, e in outbox.replies] == [("r1", "corr-1")]
    assert outbox.log == ["event:watch.c1.timeout", "reply:r1", "ack"]
    assert record.watches == {} and idle == [UUID]
    assert settler.ended == {"w1": NOW}
    assert [(e["event"], e["log_level"], e.get("outcome")) for e in logs] == [
        ("event.published", "debug", None),
        ("watch.ended", "info", "timeout"),
    ]


async def test_a_refused_end_keeps_the_watch() -> None:
    """The broker refused the event: nothing acked, nothing remembered, a warning says so."""
    delivery = FakeDelivery()
    watch = make_watch(delivery)
    settler, _, record, idle = make(watch, outbox=FakeOutbox(fail_events=True))

    with capture_logs() as logs:
        await settler.end_watch(record, watch, Outcome.NOT_FOUND, {"error": error_body("gone")})

    assert delivery.acks == 0 and record.watches == {"w1": watch}
    assert settler.ended == {} and idle == []
    assert logs == [
        {
            "event": "event.publish_failed",
            "log_level": "warning",
            "outcome": Outcome.NOT_FOUND,
            "error": "no confirm",
        }
    ]


@pytest.mark.parametrize(
    ("unreachable", "track", "outcome", "body"),
    [
        pytest.param(
            None,
            Track(Progress("running", 1, "half", JOB)),
            "timeout",
            JOB,
            id="answering",
        ),
        pytest.param(
            {"message": "feed: ConnectError", "code": "0"},
            Track(Progress("running", 1, "half", JOB)),
            "error",
            {"error": {"message": "feed: ConnectError", "code": "0"}},
            id="feed-failing",
        ),
        pytest.param(
            {"message": "feed: ConnectError", "code": "0"},
            Track(Progress(), failing=True, last_error={"message": "read: 503", "code": "0"}),
            "error",
            {"error": {"message": "read: 503", "code": "0"}},
            id="read-failing-says-why-itself",
        ),
        pytest.param(
            None,
            Track(Progress(), failing=True, last_error={"message": "read: 503", "code": "0"}),
            "error",
            {"error": {"message": "read: 503", "code": "0"}},
            id="read-failing",
        ),
    ],
)
async def test_an_expired_watch_says_whether_ontap_answered(
    unreachable: dict[str, Any] | None, track: Track, outcome: str, body: dict[str, Any]
) -> None:
    """timeout with the last job while ONTAP answers; error with the failure while it does not."""
    watch = make_watch()
    settler, outbox, record, _ = make(watch)
    record.track = track
    settler.unreachable = unreachable

    await settler.expire(record, watch)

    assert outbox.routing_keys() == [f"watch.c1.{outcome}"]
    assert json.loads(outbox.events[0].body) == body


async def test_a_checkpoint_carries_the_watch_and_its_jobs_progress_then_acks() -> None:
    """The copy says the watch, its deadline and what was published; the old delivery goes after."""
    delivery = FakeDelivery()
    watch = make_watch(delivery)
    settler, outbox, record, idle = make(watch, progress=Progress("running", 2, "half", JOB))
    delivery.log = outbox.log
    copies: list[Watch] = []
    outbox.deliver_copy = lambda w, _value: copies.append(w)

    await settler.checkpoint(record, watch)

    assert outbox.checkpoints == [
        {
            "v": 1,
            "watch_id": "w1",
            "deadline_at": 1_800_000_000.5,
            "state": "running",
            "changes": 2,
            "message": "half",
            "job": JOB,
        }
    ]
    assert copies == [watch]
    assert outbox.log == ["requeue", "ack"]
    assert record.watches == {} and idle == [UUID]


async def test_a_refused_checkpoint_keeps_the_delivery() -> None:
    """No ack without a confirmed copy; watch.checkpoint_failed says why."""
    delivery = FakeDelivery()
    watch = make_watch(delivery)
    settler, _, record, _ = make(watch, outbox=FakeOutbox(fail_requeue=True))

    with capture_logs() as logs:
        await settler.checkpoint(record, watch)

    assert delivery.acks == 0 and record.watches == {"w1": watch}
    assert logs == [
        {"event": "watch.checkpoint_failed", "log_level": "warning", "error": "copy not confirmed"}
    ]


async def test_a_stale_delivery_is_not_checkpointed() -> None:
    """A delivery of a dead channel is the broker's again: no copy of it is made."""
    watch = make_watch(FakeDelivery(stale=True))
    settler, outbox, record, _ = make(watch)
    await settler.checkpoint(record, watch)
    assert outbox.checkpoints == []


def latest_event(settler: Settler) -> Envelope:
    """job.c1.running, the job's latest event."""
    change = Change("state", Job(JOB), "running", "queued", 1)
    return job_event("c1", UUID, change, settler.now())


@pytest.mark.parametrize(
    ("reply_to", "seen", "has_latest", "replied"),
    [
        pytest.param("r9", (None, 0), True, True, id="new-watch"),
        pytest.param("r9", ("queued", 1), True, True, id="older-copy"),
        pytest.param("r9", ("running", 2), True, False, id="own-copy"),
        pytest.param(None, (None, 0), True, False, id="no-reply-to"),
        pytest.param("r9", (None, 0), False, False, id="nothing-published-yet"),
    ],
)
async def test_a_joining_watch_is_sent_the_latest_event_it_lacks(
    reply_to: str | None, seen: tuple[str | None, int], has_latest: bool, replied: bool
) -> None:
    """The job's latest event goes to the watch's reply_to, with its correlation_id and trace."""
    watch = make_watch(FakeDelivery(reply_to=reply_to, correlation_id="j-1"), seen=seen)
    watch.trace = TRACE
    settler, outbox, record, _ = make(watch, progress=Progress("running", 2))
    if has_latest:
        record.latest = latest_event(settler)

    await settler.replay_latest(record, watch)

    expected = [("r9", "job.c1.running", "j-1", TRACE.traceparent)] if replied else []
    assert [
        (to, e.routing_key, e.correlation_id, e.headers.get("ce-traceparent"))
        for to, e in outbox.replies
    ] == expected


async def test_a_refused_replay_is_logged_not_raised() -> None:
    """watch.replay_failed names the job; the watch goes on."""
    watch = make_watch(FakeDelivery(reply_to="r9"))
    settler, _, record, _ = make(watch, outbox=RefusingOutbox(), progress=Progress("running", 2))
    record.latest = latest_event(settler)

    with capture_logs() as logs:
        await settler.replay_latest(record, watch)

    assert logs == [
        {
            "event": "watch.replay_failed",
            "log_level": "warning",
            "job": UUID,
            "error": "reply not confirmed",
        }
    ]


async def test_an_event_goes_to_each_live_reply_to_with_that_watchs_correlation_and_trace() -> None:
    """One event on the exchange; a copy per watch that asked, none to a dead channel."""
    traced = make_watch(FakeDelivery(reply_to="r1", correlation_id="a"), "w1", trace=TRACE)
    plain = make_watch(FakeDelivery(reply_to="r2", correlation_id="b"), "w2")
    silent = make_watch(FakeDelivery(correlation_id="c"), "w3")
    dead = make_watch(FakeDelivery(reply_to="r4", correlation_id="d", stale=True), "w4")
    settler, outbox, _, _ = make(traced, plain, silent, dead)
    envelope = latest_event(settler)

    with capture_logs() as logs:
        await settler.publish(envelope, [traced, plain, silent, dead])

    assert outbox.events == [envelope]
    assert [
        (to, e.message_id, e.correlation_id, e.headers.get("ce-traceparent"))
        for to, e in outbox.replies
    ] == [
        ("r1", envelope.message_id, "a", TRACE.traceparent),
        ("r2", envelope.message_id, "b", None),
    ]
    assert logs == [
        {
            "event": "event.published",
            "log_level": "debug",
            "routing_key": "job.c1.running",
            "id": envelope.message_id,
        }
    ]


@pytest.mark.parametrize(
    ("new_delivery", "acks", "logged"),
    [
        (FakeDelivery, 1, []),
        (partial(FakeDelivery, stale=True), 0, []),
        (
            RefusingDelivery,
            0,
            [
                {
                    "event": "watch.ack_failed",
                    "log_level": "warning",
                    "job": UUID,
                    "error": "channel closed",
                }
            ],
        ),
    ],
    ids=["live", "stale", "refused"],
)
async def test_an_ack_detaches_the_watch_and_never_touches_a_dead_channel(
    new_delivery: Callable[[], FakeDelivery], acks: int, logged: list[dict[str, Any]]
) -> None:
    """Detached first (its copy may be back already), acked only on a live channel."""
    delivery = new_delivery()
    watch = make_watch(delivery)
    settler, _, record, idle = make(watch)

    with capture_logs() as logs:
        await settler.ack(record, watch)

    assert record.watches == {} and idle == [UUID]
    assert delivery.acks == acks
    assert logs == logged


@pytest.mark.parametrize(
    ("new_delivery", "acks", "logged"),
    [
        (FakeDelivery, 1, ["watch.late_copy_settled"]),
        (partial(FakeDelivery, stale=True), 0, []),
        (RefusingDelivery, 0, ["watch.ack_failed", "watch.late_copy_settled"]),
    ],
    ids=["live", "stale", "refused"],
)
async def test_a_late_copy_is_acknowledged_and_nothing_else(
    new_delivery: Callable[[], FakeDelivery], acks: int, logged: list[str]
) -> None:
    """A copy of an ended watch: acked on a live channel, nothing published, job named in logs."""
    delivery = new_delivery()
    watch = make_watch(delivery)
    settler, outbox, _, _ = make()

    with capture_logs() as logs:
        await settler.settle_late_copy(watch)

    assert delivery.acks == acks
    assert outbox.events == [] and outbox.replies == []
    assert [e["event"] for e in logs] == logged
    assert all(e["job"] == UUID for e in logs)


@pytest.mark.parametrize(
    ("leaving", "discovered", "idle"),
    [
        (["w1"], False, []),
        (["w1", "w2"], False, [UUID]),
        (["w1", "w2"], True, []),
        (["w1", "w1"], False, []),
    ],
    ids=["one-of-two", "both", "both-discovered", "same-twice"],
)
def test_the_job_goes_idle_when_its_last_watch_leaves(
    leaving: list[str], discovered: bool, idle: list[str]
) -> None:
    """Reading can wait once nobody here waits on the job, unless it is discovered."""
    watches = {w: make_watch(watch_id=w) for w in ["w1", "w2"]}
    settler, _, record, called = make(*watches.values(), discovered=discovered)

    for watch_id in leaving:
        settler.detach(record, watches[watch_id])

    assert called == idle
    assert set(record.watches) == {"w1", "w2"} - set(leaving)


def test_detaching_an_older_copy_leaves_the_newer_one() -> None:
    """A watch registered again under its id (its copy came back) is not removed by the old one."""
    old, new = make_watch(watch_id="w1"), make_watch(watch_id="w1")
    settler, _, record, idle = make(new)
    settler.detach(record, old)
    assert record.watches == {"w1": new} and idle == []


@pytest.mark.parametrize(
    ("before", "kept"),
    [(100.0, ["a", "b", "c"]), (200.0, ["b", "c"]), (200.5, ["c"]), (1000.0, [])],
)
def test_ended_watches_are_forgotten_oldest_first(before: float, kept: list[str]) -> None:
    """Every watch that ended before ``before`` is forgotten; one ending at it is kept."""
    settler, _, _, _ = make()
    settler.ended = {"a": 100.0, "b": 200.0, "c": 300.0}
    settler.forget_ended(before)
    assert list(settler.ended) == kept


async def test_every_line_about_a_watchs_expiry_names_its_job_and_cluster() -> None:
    """An expiry run by the housekeeping logs with the job and the cluster bound."""
    watch = make_watch()
    settler, _, record, _ = make(watch)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await settler.serially(record, watch, settler.expire)
    assert logs
    assert {(e["job"], e["cluster"]) for e in logs} == {(UUID, "c1")}
