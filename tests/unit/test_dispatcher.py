"""The dispatcher's ordering: publish before commit, checkpoint before ack, no stale acks."""

from __future__ import annotations

import asyncio
import json
import uuid as uuidlib

import pytest

from poller import checkpoint
from poller import dispatcher as dispatcher_module
from poller.dispatcher import Admission, Applied, Dispatcher
from poller.models import Job, WatchRequest, error_body
from poller.tracking import Gone, Progress, Refused, Seen, Unreachable
from poller.watch import Watch
from tests.contract import end_id
from tests.fakes import FakeDelivery, FakeOutbox

UUID = "1cd8a442-86d1-11e0-ae1c-123478563412"


def make_watch(delivery: FakeDelivery, watch_id: str = "w1", saved: int = 0) -> Watch:
    return Watch(
        watch_id=watch_id,
        request=WatchRequest(UUID, "c1", None),
        delivery=delivery,
        deadline_at=1e12,
        held_since=0.0,
        key=delivery.correlation_id or watch_id,
        saved_changes=saved,
    )


def setup(
    *deliveries: FakeDelivery, progress: Progress | None = None
) -> tuple[Dispatcher, FakeOutbox, list[Watch]]:
    outbox = FakeOutbox()
    idle: list[str] = []
    dispatcher = Dispatcher("c1", outbox, clock=lambda: 1_700_000_000.0, on_idle=idle.append)
    watches = []
    for i, delivery in enumerate(deliveries):
        delivery.log = outbox.log  # one shared timeline of broker operations
        saved = progress.changes if progress else 0
        watch = make_watch(delivery, f"w{i}", saved=saved)
        dispatcher.add(watch, progress or Progress())
        watches.append(watch)
    return dispatcher, outbox, watches


def seen(state: str) -> Seen:
    return Seen(Job({"uuid": UUID, "state": state}))


async def test_a_change_is_published_then_checkpointed_then_acked() -> None:
    """Event confirmed, then the watch re-enqueued with its progress, then the old delivery acked."""
    delivery = FakeDelivery(reply_to="r1", correlation_id="c-1")
    dispatcher, outbox, _ = setup(delivery)

    applied = await dispatcher.apply(UUID, seen("running"))

    assert applied is Applied.TAKEN
    assert outbox.log == ["event:job.c1.running", "reply:r1", "requeue", "ack"]
    assert outbox.checkpoints[0]["state"] == "running"
    assert outbox.checkpoints[0]["changes"] == 1
    assert outbox.replies[0][1].correlation_id == "c-1"


async def test_a_failed_publish_commits_nothing() -> None:
    """When the broker refuses the event, progress stays put: the same change comes again."""
    delivery = FakeDelivery()
    dispatcher, outbox, _ = setup(delivery)
    outbox.fail_events = True

    assert await dispatcher.apply(UUID, seen("running")) is Applied.RETRY
    outbox.fail_events = False
    assert await dispatcher.apply(UUID, seen("running")) is Applied.TAKEN

    assert delivery.acks == 1
    assert [c["changes"] for c in outbox.checkpoints] == [1]  # n counted once, not twice


async def test_a_failed_checkpoint_keeps_the_delivery() -> None:
    """No ack without a confirmed re-enqueued copy: the watch would otherwise be lost."""
    delivery = FakeDelivery()
    dispatcher, outbox, _ = setup(delivery)
    outbox.fail_requeue = True

    await dispatcher.apply(UUID, seen("queued"))

    assert delivery.acks == 0
    assert dispatcher.holds(UUID)


async def test_the_final_event_acks_every_watch_after_it_is_confirmed() -> None:
    """success: one event on the exchange, one reply per watch, then every delivery acked."""
    first = FakeDelivery(reply_to="r1", correlation_id="a")
    second = FakeDelivery(reply_to="r2", correlation_id="b")
    dispatcher, outbox, _ = setup(first, second, progress=Progress("running", 1))

    applied = await dispatcher.apply(UUID, seen("success"))

    assert applied is Applied.ENDED
    assert outbox.routing_keys() == ["job.c1.success"]
    assert outbox.events[0].message_id == end_id("c1", UUID, "success")
    assert outbox.log.index("event:job.c1.success") < outbox.log.index("ack")
    assert (first.acks, second.acks) == (1, 1)
    assert outbox.checkpoints == []
    assert not dispatcher.holds(UUID)


async def test_stale_deliveries_are_never_acked_nor_replied_to() -> None:
    """A delivery from a dead channel is left to the broker, which has already requeued it."""
    live, dead = FakeDelivery(reply_to="live"), FakeDelivery(reply_to="dead", stale=True)
    dispatcher, outbox, _ = setup(live, dead)

    await dispatcher.apply(UUID, seen("success"))

    assert live.acks == 1 and dead.acks == 0
    assert [to for to, _ in outbox.replies] == ["live"]


async def test_not_found_ends_each_watch_with_its_own_event() -> None:
    """watch.c1.not_found once per watch, each with that watch's correlation_id, then acked."""
    first, second = FakeDelivery(correlation_id="a"), FakeDelivery(correlation_id="b")
    dispatcher, outbox, _ = setup(first, second)
    error = error_body("entry doesn't exist", code="4", target="uuid")

    assert await dispatcher.apply(UUID, Gone(error)) is Applied.ENDED

    assert sorted(e.correlation_id or "" for e in outbox.events) == ["a", "b"]
    assert {e.routing_key for e in outbox.events} == {"watch.c1.not_found"}
    assert len({e.message_id for e in outbox.events}) == 2
    assert json.loads(outbox.events[0].body) == {"error": error}
    assert (first.acks, second.acks) == (1, 1)


async def test_a_refused_watch_event_keeps_that_watch_for_the_next_offer() -> None:
    """If one watch's not_found is refused, the others end; the job is offered again for it."""
    dispatcher, outbox, _ = setup(FakeDelivery(correlation_id="a"))
    outbox.failures = 1

    assert await dispatcher.apply(UUID, Refused(error_body("no"))) is Applied.RETRY
    assert await dispatcher.apply(UUID, Refused(error_body("no"))) is Applied.ENDED
    assert outbox.routing_keys() == ["watch.c1.error"]


@pytest.mark.parametrize(("seen_before", "replayed"), [((None, 0), True), (("running", 1), False)])
async def test_joining_watch_gets_the_latest_event_unless_it_has_it(
    seen_before: tuple[str | None, int], replayed: bool
) -> None:
    """A new watch is sent the job's latest event; its own returning checkpoint is not."""
    dispatcher, outbox, _ = setup(FakeDelivery())
    await dispatcher.apply(UUID, seen("running"))
    joining = make_watch(FakeDelivery(reply_to="mine", correlation_id="j"), "w9")
    joining.seen = seen_before

    assert dispatcher.add(joining, Progress()) is Admission.JOINED
    await dispatcher.wait_idle()

    assert [to for to, _ in outbox.replies] == (["mine"] if replayed else [])


async def test_observations_of_a_job_nobody_waits_on_are_ignored() -> None:
    """Without a watch and without discovery, nothing is published."""
    dispatcher, outbox, _ = setup()
    assert await dispatcher.apply(UUID, seen("success")) is Applied.IGNORED
    assert outbox.events == []


async def test_a_discovered_job_is_published_without_any_watch() -> None:
    """Discovery: the first observation and the end are published, and the job is forgotten."""
    dispatcher, outbox, _ = setup()
    assert await dispatcher.apply(UUID, seen("running"), discovered=True) is Applied.TAKEN
    assert await dispatcher.apply(UUID, seen("failure"), discovered=True) is Applied.ENDED
    assert outbox.routing_keys() == ["job.c1.running", "job.c1.failure"]
    assert outbox.checkpoints == []
    assert not dispatcher.holds(UUID)


async def test_while_the_watches_are_away_a_change_waits() -> None:
    """All watches re-enqueued (copies on their way): the change is not published yet."""
    dispatcher, outbox, _ = setup(FakeDelivery())
    await dispatcher.apply(UUID, seen("running"))  # checkpointed: the watch left

    assert await dispatcher.apply(UUID, seen("success")) is Applied.RETRY
    assert outbox.routing_keys() == ["job.c1.running"]


async def test_a_failing_cluster_turns_a_deadline_into_error() -> None:
    """Unreachable: the job stays as it was; a deadline now ends the watch as error."""
    delivery = FakeDelivery()
    dispatcher, outbox, (watch,) = setup(delivery)
    down = error_body("ConnectError: connection refused")

    assert await dispatcher.apply(UUID, Unreachable(down)) is Applied.TAKEN
    watch.deadline_at = 0.0
    dispatcher.sweep(1_700_000_000.0)
    await dispatcher.wait_idle()

    assert outbox.routing_keys() == ["watch.c1.error"]
    assert json.loads(outbox.events[0].body) == {"error": down}


def test_checkpoint_round_trip() -> None:
    """What a checkpoint header carries is read back identically."""
    saved = checkpoint.Checkpoint(
        "w", 123.5, Progress("running", 2, "half", {"uuid": UUID, "state": "running"})
    )
    assert checkpoint.decode(checkpoint.encode(saved)) == saved


async def test_a_burst_of_ends_is_published_a_bounded_number_at_a_time() -> None:
    """Thousands of ends at once wait their turn; a change of another job does not wait on them."""
    outbox = FakeOutbox(held_states=frozenset({"success"}))
    dispatcher = Dispatcher("c1", outbox, clock=lambda: 1_700_000_000.0)
    bound = dispatcher_module._ENDS_AT_ONCE
    jobs = [str(uuidlib.uuid4()) for _ in range(bound + 10)]
    running = str(uuidlib.uuid4())
    deliveries = {job: FakeDelivery() for job in [*jobs, running]}
    for job, delivery in deliveries.items():
        watch = Watch(job, WatchRequest(job, "c1", None), delivery, 1e12, 0.0, key=job)
        dispatcher.add(watch, Progress())

    ends = [
        asyncio.create_task(dispatcher.apply(j, Seen(Job({"uuid": j, "state": "success"}))))
        for j in jobs
    ]
    for _ in range(20):  # every task as far as it gets
        await asyncio.sleep(0)
    assert outbox.waiting == bound
    change = Seen(Job({"uuid": running, "state": "running"}))
    assert await dispatcher.apply(running, change) is Applied.TAKEN

    outbox.gate.set()
    assert set(await asyncio.gather(*ends)) == {Applied.ENDED}
    assert all(deliveries[j].acks == 1 for j in jobs)
