"""The dispatcher's ordering: publish before commit, checkpoint before ack, no stale acks."""

from __future__ import annotations

import asyncio
import json
import uuid as uuidlib
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from poller import checkpoint
from poller import dispatcher as dispatcher_module
from poller.dispatcher import Admission, Applied, Dispatcher
from poller.events import Envelope
from poller.metrics import Metrics
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


def seen(state: str, message: str | None = None) -> Seen:
    raw: dict[str, Any] = {"uuid": UUID, "state": state}
    if message is not None:
        raw["message"] = message
    return Seen(Job(raw))


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


@pytest.mark.parametrize("by", ["change", "timer"])
async def test_a_checkpoint_carries_the_watchs_own_deadline(by: str) -> None:
    """The re-enqueued copy, after a change or at checkpoint_interval, keeps the watch's deadline."""
    dispatcher, outbox, (watch,) = setup(FakeDelivery())
    watch.deadline_at = 1_700_003_600.5
    if by == "change":
        await dispatcher.apply(UUID, seen("running"))
    else:
        dispatcher.sweep(1_700_000_000.0)  # held since 0: long past checkpoint_interval
        await dispatcher.wait_idle()

    assert [c["deadline_at"] for c in outbox.checkpoints] == [1_700_003_600.5], (
        "the copy must carry the watch's deadline, or the watch resumes with a fresh one"
    )


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


OUTCOMES = [
    ("not_found", Gone(error_body("entry doesn't exist", code="4", target="uuid"))),
    ("error", Refused(error_body("not authorized for that command", code="6"))),
    ("timeout", None),  # the deadline passes while ONTAP answers
]


async def end_watches(dispatcher: Dispatcher, watches: list[Watch], observation: Any) -> None:
    """End the watches with ``observation``, or by their deadline when it is None."""
    if observation is not None:
        await dispatcher.apply(UUID, observation)
        return
    for watch in watches:
        watch.deadline_at = 0.0
    dispatcher.sweep(1_700_000_000.0)
    await dispatcher.wait_idle()


@pytest.mark.parametrize(("outcome", "observation"), OUTCOMES, ids=[o for o, _ in OUTCOMES])
async def test_a_watch_outcome_is_acked_only_after_its_event_is_confirmed(
    outcome: str, observation: Any
) -> None:
    """watch.c1.<outcome>: the broker confirms the event first, and only then is the request acked."""
    delivery = FakeDelivery(correlation_id="a")
    dispatcher, outbox, watches = setup(delivery)

    await end_watches(dispatcher, watches, observation)

    assert outbox.log == [f"event:watch.c1.{outcome}", "ack"], (
        "the request must be acknowledged after its watch event is confirmed, not before"
    )


@pytest.mark.parametrize(("outcome", "observation"), OUTCOMES, ids=[o for o, _ in OUTCOMES])
async def test_a_refused_watch_outcome_leaves_the_request_unacked(
    outcome: str, observation: Any
) -> None:
    """The broker refuses watch.c1.<outcome>: the request stays held, unacked, for another try."""
    delivery = FakeDelivery(correlation_id="a")
    dispatcher, outbox, watches = setup(delivery)
    outbox.fail_events = True

    await end_watches(dispatcher, watches, observation)

    assert outbox.attempts >= 1
    assert delivery.settled == [], f"acknowledged although watch.c1.{outcome} was refused"
    assert dispatcher.holds(UUID)
    outbox.fail_events = False
    if observation is None:
        watches[0].not_before = 0.0  # the retry pause of a refused expiry, over
    await end_watches(dispatcher, watches, observation)
    assert outbox.routing_keys() == [f"watch.c1.{outcome}"]
    assert delivery.settled == ["ack"]


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


NOW = 1_700_000_000.0


class Clock:
    """The dispatcher's clock, moved by the test."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def held(
    dispatcher: Dispatcher,
    delivery: FakeDelivery,
    watch_id: str = "w1",
    progress: Progress | None = None,
    **fields: Any,
) -> Watch:
    """A watch added to ``dispatcher`` (job UUID), held since NOW, with ``fields`` set on it."""
    watch = make_watch(delivery, watch_id)
    watch.held_since = NOW
    for name, value in fields.items():
        setattr(watch, name, value)
    dispatcher.add(watch, progress or Progress())
    return watch


@pytest.mark.parametrize(("now", "ended"), [(NOW - 0.001, False), (NOW, True), (NOW + 5, True)])
async def test_a_deadline_ends_the_watch_from_that_very_moment(now: float, ended: bool) -> None:
    """deadline_at <= now: the sweep ends the watch with watch.<cluster>.timeout and acks it."""
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=Clock())
    delivery = FakeDelivery()
    held(dispatcher, delivery, deadline_at=NOW)

    dispatcher.sweep(now)
    await dispatcher.wait_idle()

    assert outbox.routing_keys() == (["watch.c1.timeout"] if ended else [])
    assert delivery.acks == (1 if ended else 0)


async def test_a_deadline_waits_for_the_read_under_way() -> None:
    """While the job is being read, its deadline waits: the read tells timeout from error."""
    reading = {UUID}
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=Clock(), reading=reading.__contains__)
    held(dispatcher, FakeDelivery(), deadline_at=NOW)

    dispatcher.sweep(NOW + 1)
    await dispatcher.wait_idle()
    assert outbox.events == []

    reading.clear()
    dispatcher.sweep(NOW + 2)
    await dispatcher.wait_idle()
    assert outbox.routing_keys() == ["watch.c1.timeout"]


@pytest.mark.parametrize(("held_for", "checkpointed"), [(599.9, False), (600.0, True)])
async def test_a_watch_held_for_checkpoint_interval_is_re_enqueued(
    held_for: float, checkpointed: bool
) -> None:
    """By default after 600 s held, the watch is re-enqueued with its progress, then acked."""
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=Clock())
    delivery = FakeDelivery()
    held(dispatcher, delivery, held_since=NOW)

    dispatcher.sweep(NOW + held_for)
    await dispatcher.wait_idle()

    assert [c["watch_id"] for c in outbox.checkpoints] == (["w1"] if checkpointed else [])
    assert delivery.acks == (1 if checkpointed else 0)
    assert dispatcher.holds(UUID)  # its copy is on its way back


async def test_a_failed_checkpoint_is_tried_again_two_seconds_later() -> None:
    """The broker refused the copy: the delivery stays held, and the sweep retries after 2 s."""
    clock = Clock()
    outbox = FakeOutbox(fail_requeue=True)
    dispatcher = Dispatcher("c1", outbox, clock=clock)
    delivery = FakeDelivery()
    held(dispatcher, delivery, held_since=NOW - 600)

    with capture_logs() as logs:
        for now in [NOW, NOW + 1.9, NOW + 2.0]:
            clock.now = now
            dispatcher.sweep(now)
            await dispatcher.wait_idle()
    tried = [e for e in logs if e["event"] == "watch.checkpoint_failed"]
    assert len(tried) == 2
    assert {e["log_level"] for e in tried} == {"warning"}
    assert delivery.acks == 0

    outbox.fail_requeue = False
    clock.now = NOW + 4.0
    dispatcher.sweep(NOW + 4.0)
    await dispatcher.wait_idle()
    assert len(outbox.checkpoints) == 1 and delivery.acks == 1


async def test_one_expiry_at_a_time_per_watch() -> None:
    """Sweeps while a watch's end is being confirmed do not end it a second time."""
    outbox = FakeOutbox(held_states=frozenset({"timeout"}))
    dispatcher = Dispatcher("c1", outbox, clock=Clock())
    delivery = FakeDelivery()
    held(dispatcher, delivery, deadline_at=NOW)

    for tick in range(3):
        dispatcher.sweep(NOW + tick)
        await asyncio.sleep(0)
    outbox.gate.set()
    await dispatcher.wait_idle()

    assert outbox.waiting == 1
    assert outbox.routing_keys() == ["watch.c1.timeout"]
    assert delivery.acks == 1


async def test_a_job_nobody_waits_on_is_forgotten_after_its_grace() -> None:
    """A job whose watch left with a checkpoint is kept 30 s for the copy, then forgotten."""
    idle: list[str] = []
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=Clock(), on_idle=idle.append)
    held(dispatcher, FakeDelivery())
    dispatcher.sweep(NOW - 60)
    await dispatcher.apply(UUID, seen("running"))  # checkpointed: the watch left
    idle.clear()

    kept = []
    for now in [NOW, NOW + 29.9, NOW + 30.0]:
        dispatcher.sweep(now)
        kept.append(dispatcher.holds(UUID))

    assert kept == [True, True, False]
    assert idle == [UUID]


async def test_a_job_with_a_watch_or_discovered_is_never_forgotten() -> None:
    """Held watches and discovered jobs keep their record, however long they last."""
    dispatcher = Dispatcher("c1", FakeOutbox(), clock=Clock(), checkpoint_interval_s=1e9)
    held(dispatcher, FakeDelivery())
    other = "2cd8a442-86d1-11e0-ae1c-123478563412"
    await dispatcher.apply(other, Seen(Job({"uuid": other, "state": "running"})), discovered=True)

    for now in [NOW, NOW + 31, NOW + 3600]:
        dispatcher.sweep(now)

    assert dispatcher.holds(UUID) and dispatcher.holds(other)


async def test_the_gauges_count_watches_and_jobs() -> None:
    """ontap_poller_watches_active and ontap_poller_jobs_tracked, per cluster, at each sweep."""
    metrics = Metrics()
    dispatcher = Dispatcher("c1", FakeOutbox(), clock=Clock(), metrics=metrics)
    for n in range(3):
        held(dispatcher, FakeDelivery(), f"w{n}")
    other = "2cd8a442-86d1-11e0-ae1c-123478563412"
    await dispatcher.apply(other, Seen(Job({"uuid": other, "state": "running"})), discovered=True)

    dispatcher.sweep(NOW)

    sample = metrics.registry.get_sample_value
    assert sample("ontap_poller_watches_active", {"cluster": "c1"}) == 3
    assert sample("ontap_poller_jobs_tracked", {"cluster": "c1"}) == 2
    assert sample("ontap_poller_jobs_discovered_total", {"cluster": "c1"}) == 1


@pytest.mark.parametrize(
    ("after_s", "admission"), [(600.0, Admission.SETTLED), (600.5, Admission.NEW)]
)
async def test_an_ended_watch_is_remembered_for_ten_minutes(
    after_s: float, admission: Admission
) -> None:
    """A late copy of an ended watch is settled for 600 s; after that it is a watch again."""
    dispatcher = Dispatcher("c1", FakeOutbox(), clock=Clock())
    held(dispatcher, FakeDelivery())
    await dispatcher.apply(UUID, seen("success"))

    dispatcher.sweep(NOW + after_s)
    late = make_watch(FakeDelivery(), "w1")

    assert dispatcher.add(late, Progress("running", 1), resumed=True) is admission
    await dispatcher.wait_idle()
    assert late.delivery.acks == (1 if admission is Admission.SETTLED else 0)  # type: ignore[attr-defined]


async def test_the_sweep_runs_often_with_few_jobs() -> None:
    """With few jobs the housekeeping runs every 50 ms: a deadline is kept to within a fraction of a second."""
    calls: list[float] = []

    def clock() -> float:
        calls.append(NOW)
        return NOW

    dispatcher = Dispatcher("c1", FakeOutbox(), clock=clock)
    task = asyncio.create_task(dispatcher.run())
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert len(calls) >= 3


async def test_a_final_event_reaches_each_reply_to_once() -> None:
    """The end is sent to every watch's reply_to once, not again when the watches are settled."""
    first = FakeDelivery(reply_to="r1", correlation_id="a")
    second = FakeDelivery(reply_to="r2", correlation_id="b")
    dispatcher, outbox, _ = setup(first, second)

    await dispatcher.apply(UUID, seen("success"))

    assert sorted((to, e.routing_key, e.correlation_id) for to, e in outbox.replies) == [
        ("r1", "job.c1.success", "a"),
        ("r2", "job.c1.success", "b"),
    ]


async def test_the_end_of_the_watches_is_logged_once_with_its_outcome() -> None:
    """watch.ended (info) says the outcome and how many watches ended with it."""
    dispatcher, _, _ = setup(FakeDelivery(), FakeDelivery())
    with capture_logs() as logs:
        await dispatcher.apply(UUID, seen("failure"))
    ended = [e for e in logs if e["event"] == "watch.ended"]
    assert ended == [
        {"event": "watch.ended", "log_level": "info", "outcome": "failure", "watches": 2}
    ]


async def test_progress_is_published_without_a_checkpoint() -> None:
    """A progress event does not change n, so the watch keeps its delivery (no copy, no ack)."""
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=Clock(), publish_progress=True)
    watch = held(
        dispatcher, FakeDelivery(), progress=Progress("running", 1, "10%"), saved_changes=1
    )

    assert await dispatcher.apply(UUID, seen("running", "20%")) is Applied.TAKEN

    assert outbox.routing_keys() == ["progress.c1.running"]
    assert outbox.checkpoints == []
    assert watch.delivery.acks == 0  # type: ignore[attr-defined]
    assert dispatcher.holds(UUID)


async def test_without_publish_progress_a_new_message_publishes_nothing() -> None:
    """publish_progress is off unless asked for."""
    dispatcher, outbox, _ = setup(FakeDelivery(), progress=Progress("running", 1, "10%"))
    assert await dispatcher.apply(UUID, seen("running", "20%")) is Applied.TAKEN
    assert outbox.events == []


async def test_a_refused_event_is_logged_and_offered_again() -> None:
    """event.publish_failed (warning) and RETRY: nothing else happens to the watch."""
    delivery = FakeDelivery()
    dispatcher, outbox, _ = setup(delivery)
    outbox.fail_events = True
    with capture_logs() as logs:
        assert await dispatcher.apply(UUID, seen("running")) is Applied.RETRY
    assert logs == [
        {"event": "event.publish_failed", "log_level": "warning", "error": "no confirm"}
    ]
    assert outbox.checkpoints == [] and delivery.acks == 0


async def test_a_copy_with_the_same_history_keeps_the_jobs_failure() -> None:
    """A copy adding nothing to the job's history leaves its track, failure included, as it is."""
    dispatcher, outbox, _ = setup(FakeDelivery())
    await dispatcher.apply(UUID, Unreachable(error_body("ConnectError")))
    dispatcher.add(make_watch(FakeDelivery(), "w9"), Progress())
    await dispatcher.wait_idle()

    dispatcher.sweep(2e12)  # past both deadlines
    await dispatcher.wait_idle()

    assert outbox.routing_keys() == ["watch.c1.error", "watch.c1.error"]


async def test_a_copy_of_a_watch_being_settled_leaves_the_older_delivery_alone() -> None:
    """The older copy's own expiry or checkpoint acks it: it is not acknowledged twice."""
    dispatcher, _, (older,) = setup(FakeDelivery())
    older.busy = True
    dispatcher.add(make_watch(FakeDelivery(), "w0"), Progress(), resumed=True)
    await dispatcher.wait_idle()
    assert older.delivery.acks == 0  # type: ignore[attr-defined]


async def test_every_line_about_an_observation_names_its_job_and_cluster() -> None:
    """The event, its failure and the end of the watches all carry job and cluster."""
    dispatcher, outbox, _ = setup(FakeDelivery(), FakeDelivery())
    outbox.failures = 1
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await dispatcher.apply(UUID, seen("running"))
        await dispatcher.apply(UUID, seen("success"))
    assert {e["event"] for e in logs} == {"event.publish_failed", "event.published", "watch.ended"}
    assert {(e["job"], e["cluster"]) for e in logs} == {(UUID, "c1")}


@pytest.mark.parametrize(
    ("feed", "routing_key", "body"),
    [
        (
            None,
            "watch.c1.timeout",
            {"error": error_body("deadline passed before the job was read")},
        ),
        (error_body("ConnectError"), "watch.c1.error", {"error": error_body("ConnectError")}),
    ],
    ids=["feed-answering", "feed-failing"],
)
async def test_the_feeds_last_answer_decides_timeout_or_error(
    feed: dict[str, Any] | None, routing_key: str, body: dict[str, Any]
) -> None:
    """A deadline passing while the cluster's feed fails ends the watch as error, with why."""
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=Clock())
    held(dispatcher, FakeDelivery(), deadline_at=NOW)
    dispatcher.note_reachable(error_body("earlier failure"))
    dispatcher.note_reachable(feed)

    dispatcher.sweep(NOW)
    await dispatcher.wait_idle()

    assert outbox.routing_keys() == [routing_key]
    assert json.loads(outbox.events[0].body) == body


async def test_losing_discovery_forgets_only_the_jobs_nobody_here_waits_on() -> None:
    """Discovered and unwatched: forgotten. Watched (discovered or not): kept."""
    dispatcher = Dispatcher("c1", FakeOutbox(), clock=Clock(), checkpoint_interval_s=1e9)
    lonely, shared = "2cd8a442-86d1-11e0-ae1c-123478563412", "3cd8a442-86d1-11e0-ae1c-123478563412"
    for job in [lonely, shared]:
        await dispatcher.apply(job, Seen(Job({"uuid": job, "state": "running"})), discovered=True)
    watch = make_watch(FakeDelivery(), "w-shared")
    watch.request = WatchRequest(shared, "c1", None)
    dispatcher.add(watch, Progress())
    held(dispatcher, FakeDelivery())
    await dispatcher.wait_idle()

    dispatcher.forget_discovered()

    assert [dispatcher.holds(j) for j in [lonely, shared, UUID]] == [False, True, True]


async def test_a_lagging_copy_is_caught_up_before_the_change_in_the_same_offer() -> None:
    """The copy lacking n=1 is re-enqueued with it, then the change is published, all at once."""
    behind, current = FakeDelivery(), FakeDelivery()
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=Clock())
    behind.log = current.log = outbox.log
    dispatcher.add(make_watch(current, "w-current", saved=1), Progress("queued", 1))
    dispatcher.add(make_watch(behind, "w-behind", saved=0), Progress())
    await dispatcher.wait_idle()

    assert await dispatcher.apply(UUID, seen("running")) is Applied.TAKEN

    assert outbox.log == ["requeue", "ack", "event:job.c1.running", "requeue", "ack"]
    assert [(c["watch_id"], c["state"], c["changes"]) for c in outbox.checkpoints] == [
        ("w-behind", "queued", 1),
        ("w-current", "running", 2),
    ]


async def test_the_sweep_drops_a_dead_channels_delivery_untouched() -> None:
    """Stale: neither expired nor acked (the broker has it again); the job goes idle."""
    idle: list[str] = []
    outbox = FakeOutbox()
    dispatcher = Dispatcher("c1", outbox, clock=Clock(), on_idle=idle.append)
    delivery = FakeDelivery(stale=True)
    held(dispatcher, delivery, deadline_at=NOW)

    dispatcher.sweep(NOW + 1)
    await dispatcher.wait_idle()

    assert outbox.events == [] and delivery.acks == 0
    assert idle == [UUID]


class BuggyOutbox(FakeOutbox):
    """An outbox that fails in an unforeseen way (not a refusal of the broker)."""

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        raise RuntimeError("unforeseen")


async def test_a_background_task_that_raises_is_logged_with_its_cluster() -> None:
    """dispatcher.task_failed (error), with the cluster and the error: a bug, never silent."""
    dispatcher = Dispatcher("c1", BuggyOutbox(), clock=Clock())
    held(dispatcher, FakeDelivery())
    await dispatcher.apply(UUID, seen("running"))
    with capture_logs() as logs:
        dispatcher.add(make_watch(FakeDelivery(reply_to="r9"), "w9"), Progress())
        await dispatcher.wait_idle()
    assert [(e["event"], e["log_level"], e["cluster"], e["error"]) for e in logs] == [
        ("dispatcher.task_failed", "error", "c1", "RuntimeError('unforeseen')")
    ]


async def test_a_copy_arriving_while_its_twin_expires_leaves_the_twin_to_its_expiry() -> None:
    """The expiring delivery is acknowledged once, by its expiry (a second ack closes a channel)."""
    outbox = FakeOutbox(held_states=frozenset({"timeout"}))
    dispatcher = Dispatcher("c1", outbox, clock=Clock())
    expiring = FakeDelivery()
    held(dispatcher, expiring, deadline_at=NOW)
    dispatcher.sweep(NOW)
    await asyncio.sleep(0)
    assert outbox.waiting == 1  # its watch.c1.timeout awaits the broker's confirm

    dispatcher.add(make_watch(FakeDelivery(), "w1"), Progress(), resumed=True)
    await asyncio.sleep(0)
    outbox.gate.set()
    await dispatcher.wait_idle()

    assert expiring.settled == ["ack"]


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
