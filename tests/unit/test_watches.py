"""The dispatcher's ordering: publish before commit, checkpoint before ack, no stale acks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from poller import checkpoint
from poller.errors import BrokerError
from poller.events import Envelope
from poller.models import Job, WatchRequest, error_body
from poller.tracking import Gone, Policy, Progress, Seen, Track, step
from poller.watches import Dispatcher, JobEntry, Watch
from tests.fakes import FakeDelivery

UUID = "1cd8a442-86d1-11e0-ae1c-123478563412"
POLICY = Policy(poll_interval_min_s=1.0, poll_interval_max_s=30.0)


@dataclass
class FakeOutbox:
    log: list[str] = field(default_factory=list)
    events: list[Envelope] = field(default_factory=list)
    replies: list[tuple[str, Envelope]] = field(default_factory=list)
    checkpoints: list[dict[str, object]] = field(default_factory=list)
    fail_events: bool = False
    fail_requeue: bool = False

    async def publish_event(self, envelope: Envelope) -> None:
        if self.fail_events:
            raise BrokerError("broker down")
        self.events.append(envelope)
        self.log.append(f"event:{envelope.routing_key}")

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        self.replies.append((reply_to, envelope))
        self.log.append(f"reply:{reply_to}")

    async def requeue_watch(self, watch: Watch, value: str) -> None:
        if self.fail_requeue:
            raise BrokerError("no confirm")
        self.checkpoints.append(json.loads(value))
        self.log.append("requeue")


def make_watch(delivery: FakeDelivery, watch_id: str = "w1") -> Watch:
    return Watch(
        watch_id=watch_id,
        request=WatchRequest(UUID, "c1", None),
        delivery=delivery,
        deadline_at=1e12,
        held_since=0.0,
        key=delivery.correlation_id or watch_id,
    )


def setup(*deliveries: FakeDelivery) -> tuple[Dispatcher, FakeOutbox, JobEntry]:
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=lambda: 1_700_000_000.0)
    entry = JobEntry(UUID, Track(), next_poll_at=0.0)
    for i, delivery in enumerate(deliveries):
        delivery.log = outbox.log  # one shared timeline of broker operations
        entry.watches[f"w{i}"] = make_watch(delivery, f"w{i}")
    return dispatcher, outbox, entry


def seen(state: str) -> Seen:
    return Seen(Job({"uuid": UUID, "state": state}))


async def test_a_change_is_published_then_checkpointed_then_acked() -> None:
    """Event confirmed, then the watch re-enqueued with its progress, then the old delivery acked."""
    delivery = FakeDelivery(reply_to="r1", correlation_id="c-1")
    dispatcher, outbox, entry = setup(delivery)

    finished = await dispatcher.apply(entry, step(entry.track, seen("running"), POLICY))

    assert not finished
    assert outbox.log == ["event:job.c1.running", "reply:r1", "requeue", "ack"]
    assert outbox.checkpoints[0]["state"] == "running"
    assert outbox.checkpoints[0]["changes"] == 1
    assert outbox.replies[0][1].correlation_id == "c-1"
    assert entry.watches == {}  # handed to the queue; its copy comes back with the checkpoint


async def test_a_failed_publish_commits_nothing() -> None:
    """When the broker refuses the event, progress stays put so the next poll publishes it again."""
    delivery = FakeDelivery()
    dispatcher, outbox, entry = setup(delivery)
    outbox.fail_events = True

    await dispatcher.apply(entry, step(entry.track, seen("running"), POLICY))

    assert entry.track == Track()
    assert delivery.acks == 0
    assert outbox.checkpoints == []


async def test_a_failed_checkpoint_keeps_the_delivery() -> None:
    """No ack without a confirmed re-enqueued copy: the watch would otherwise be lost."""
    delivery = FakeDelivery()
    dispatcher, outbox, entry = setup(delivery)
    outbox.fail_requeue = True

    await dispatcher.apply(entry, step(entry.track, seen("queued"), POLICY))

    assert delivery.acks == 0
    assert "w0" in entry.watches
    assert entry.track.progress.state == "queued"


async def test_the_final_event_acks_every_watch_after_it_is_confirmed() -> None:
    """success: one event on the exchange, one reply per watch, then every delivery acked."""
    first, second = (
        FakeDelivery(reply_to="r1", correlation_id="a"),
        FakeDelivery(reply_to="r2", correlation_id="b"),
    )
    dispatcher, outbox, entry = setup(first, second)
    entry.track = Track(progress=Progress("running", 1))
    for watch in entry.watches.values():
        watch.saved_changes = 1  # their copies carry that progress

    finished = await dispatcher.apply(entry, step(entry.track, seen("success"), POLICY))

    assert finished
    assert [e.routing_key for e in outbox.events] == ["job.c1.success"]
    assert outbox.log.index("event:job.c1.success") < outbox.log.index("ack")
    assert (first.acks, second.acks) == (1, 1)
    assert outbox.checkpoints == []


async def test_stale_deliveries_are_never_acked_nor_replied_to() -> None:
    """A delivery from a dead channel is left to the broker, which has already requeued it."""
    live, dead = FakeDelivery(reply_to="live"), FakeDelivery(reply_to="dead", stale=True)
    dispatcher, outbox, entry = setup(live, dead)

    await dispatcher.apply(entry, step(entry.track, seen("success"), POLICY))

    assert live.acks == 1 and dead.acks == 0
    assert [to for to, _ in outbox.replies] == ["live"]


async def test_not_found_ends_each_watch_with_its_own_event() -> None:
    """watch.c1.not_found once per watch, each with that watch's correlation_id, then acked."""
    first, second = FakeDelivery(correlation_id="a"), FakeDelivery(correlation_id="b")
    dispatcher, outbox, entry = setup(first, second)
    error = error_body("entry doesn't exist", code="4", target="uuid")

    finished = await dispatcher.apply(entry, step(entry.track, Gone(error), POLICY))

    assert finished
    assert sorted(e.correlation_id or "" for e in outbox.events) == ["a", "b"]
    assert {e.routing_key for e in outbox.events} == {"watch.c1.not_found"}
    assert len({e.message_id for e in outbox.events}) == 2
    assert json.loads(outbox.events[0].body) == {"error": error}


@pytest.mark.parametrize(("seen_before", "replayed"), [((None, 0), True), (("running", 1), False)])
async def test_joining_watch_gets_the_latest_event_unless_it_has_it(
    seen_before: tuple[str | None, int], replayed: bool
) -> None:
    """A new watch is sent the job's latest event; its own returning checkpoint is not."""
    dispatcher, outbox, entry = setup(FakeDelivery())
    await dispatcher.apply(entry, step(entry.track, seen("running"), POLICY))
    joining = make_watch(FakeDelivery(reply_to="mine", correlation_id="j"), "w9")
    joining.seen = seen_before

    await dispatcher.replay_latest(entry, joining)

    assert [to for to, _ in outbox.replies] == (["mine"] if replayed else [])


def test_checkpoint_round_trip() -> None:
    """What a checkpoint header carries is read back identically."""
    saved = checkpoint.Checkpoint(
        "w", 123.5, Progress("running", 2, "half", {"uuid": UUID, "state": "running"})
    )
    assert checkpoint.decode(checkpoint.encode(saved)) == saved
