"""End to end: watch requests into a real RabbitMQ, the simulator over real HTTP, events out."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_binary
from cloudevents.core.formats.json import JSONFormat
from netapp_ontap.resources import Job as NetAppJob

from poller import checkpoint
from poller.checkpoint import Checkpoint
from poller.tracking import Progress
from tests.contract import event_id as change_id
from tests.contract import watch_end_id
from tests.integration.conftest import cluster, make_settings
from tests.schemas import validate

pytestmark = pytest.mark.integration

SUCCESS = [
    {"after": 0, "state": "queued", "message": "Queued"},
    {"after": 1.5, "state": "running", "message": "Creating volume"},
    {"after": 3.0, "state": "success", "message": "Complete: Successful"},
]
FAILURE = [
    {"after": 0, "state": "running", "message": "Transferring"},
    {"after": 2.5, "state": "failure", "message": "Destination volume is full", "code": 13303812},
]


def decode_cloudevent(message: Any) -> Any:
    """Read an event as a subscriber using the cloudevents package would."""
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in message.headers.items()}
    return from_binary(RabbitMQMessage(headers, message.content_type, message.body), JSONFormat())


async def test_successful_job_publishes_each_state_with_the_full_contract(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """queued -> running -> success arrive as job.c1.<state> with every header, property and body."""
    simulator, base_url = sim
    job = simulator.create_job(description="vol create", timeline=SUCCESS)
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)})
    await start_worker(settings)
    events, _ = await subscribe(names.events_exchange, "#")
    before = datetime.now(UTC)

    await publish(names.watch_queue, {"uuid": job.upper(), "cluster": "c1"}, message_id="req-1")
    messages = await events.wait_keys("job.c1.queued", "job.c1.running", "job.c1.success")

    assert [m.routing_key for m in events.messages] == [
        "job.c1.queued",
        "job.c1.running",
        "job.c1.success",
    ]
    previous = [None, "queued", "running"]
    for n, (message, state) in enumerate(
        zip(messages, ["queued", "running", "success"], strict=True)
    ):
        body = json.loads(message.body)
        validate("job.json", body)
        assert body["uuid"] == job and body["state"] == state
        assert NetAppJob.from_dict(body).state == state  # NetApp's own model reads it
        headers = message.headers
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-id"] == change_id("c1", job, n, state)
        assert headers["ce-source"] == "/clusters/c1"
        assert headers["ce-type"] == f"ontap.job.{state}"
        assert headers["ce-subject"] == job
        assert headers["ce-cluster"] == "c1"
        assert headers.get("ce-previousstate") == previous[n]
        assert datetime.fromisoformat(str(headers["ce-time"])) >= before
        validate("event-headers.json", {k: str(v) for k, v in headers.items()})
        assert message.content_type == "application/json"
        assert message.message_id == headers["ce-id"]
        assert message.type == headers["ce-type"]
        assert message.app_id == "ontap-job-poller"
        assert message.delivery_mode == 2
        assert message.timestamp is not None
        event = decode_cloudevent(message)
        assert event.get_id() == headers["ce-id"]
        assert event.get_type() == f"ontap.job.{state}"
        assert event.get_data() == body
    assert "end_time" in json.loads(messages[2].body)
    assert "end_time" not in json.loads(messages[1].body)


async def test_failed_job_ends_with_job_failure_and_reply_to_copies(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """reply_to receives every event of the watch with its correlation_id; the end is failure."""
    simulator, base_url = sim
    job = simulator.create_job(timeline=FAILURE)
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    replies, reply_queue = await subscribe(None)

    await publish(names.watch_queue, {"uuid": job}, correlation_id="corr-7", reply_to=reply_queue)
    await replies.wait_for(lambda ms: any(json.loads(m.body).get("state") == "failure" for m in ms))

    states = [json.loads(m.body)["state"] for m in replies.messages]
    assert states == ["running", "failure"]
    assert all(m.correlation_id == "corr-7" for m in replies.messages)
    failure = replies.messages[-1]
    assert failure.headers["ce-type"] == "ontap.job.failure"
    assert json.loads(failure.body)["code"] == 13303812


async def test_unknown_job_ends_the_watch_as_not_found_with_ontaps_error(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """A 404 from ONTAP publishes watch.c1.not_found carrying the documented error body."""
    _, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events, _ = await subscribe(names.events_exchange, "watch.*.*")
    missing = str(uuid.uuid4())

    # Both ids, as most clients send them (aio-pika makes up a message_id when none is given):
    # the watch's end is named by its correlation_id.
    await publish(
        names.watch_queue, {"uuid": missing}, correlation_id="corr-404", message_id="msg-404"
    )
    (message,) = await events.wait_keys("watch.c1.not_found")

    body = json.loads(message.body)
    validate("error.json", body)
    assert body["error"]["code"] == "4"
    assert body["error"]["message"] == "entry doesn't exist"
    assert message.correlation_id == "corr-404"
    assert message.headers["ce-type"] == "ontap.watch.not_found"
    assert message.headers["ce-subject"] == missing
    assert "ce-previousstate" not in message.headers
    assert message.headers["ce-id"] == watch_end_id("c1", missing, "not_found", "corr-404"), (
        "the watch's end is named by its correlation_id, before its message_id"
    )


async def test_a_watch_end_without_correlation_id_is_named_by_its_message_id(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """Without a correlation_id, the watch.* ce-id takes the request's message_id."""
    _, base_url = sim
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events, _ = await subscribe(names.events_exchange, "watch.*.*")
    missing = str(uuid.uuid4())

    await publish(names.watch_queue, {"uuid": missing}, message_id="msg-7")
    (message,) = await events.wait_keys("watch.c1.not_found")

    assert message.headers["ce-id"] == watch_end_id("c1", missing, "not_found", "msg-7"), (
        "without a correlation_id, the watch's end is named by its message_id"
    )
    assert message.correlation_id is None


async def test_refused_credentials_end_the_watch_as_error(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """401 from ONTAP ends the watch with watch.c1.error and ONTAP's error object."""
    simulator, base_url = sim
    job = simulator.create_job(timeline=SUCCESS)
    wrong = cluster(base_url).model_copy(update={"password": None, "password_file": None})
    wrong = type(wrong).model_validate(
        {**wrong.model_dump(exclude={"password", "password_file"}), "password": "wrong"}
    )
    await start_worker(make_settings(amqp_url, names, {"c1": wrong}))
    events, _ = await subscribe(names.events_exchange, "#")

    await publish(names.watch_queue, {"uuid": job})
    (message,) = await events.wait_keys("watch.c1.error")

    body = json.loads(message.body)
    validate("error.json", body)
    assert body["error"]["code"] == "6"
    assert [m.routing_key for m in events.messages] == ["watch.c1.error"]


async def test_watches_of_one_job_are_polled_as_one_and_published_once(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """Three watches of one job: each change once on the exchange, once per reply_to."""
    simulator, base_url = sim
    job = simulator.create_job(
        timeline=[{"after": 0, "state": "running"}, {"after": 3.0, "state": "success"}]
    )
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events, _ = await subscribe(names.events_exchange, "#")
    replies, reply_queue = await subscribe(None)

    for i in range(3):
        await publish(
            names.watch_queue, {"uuid": job}, correlation_id=f"w{i}", reply_to=reply_queue
        )
    await events.wait_keys("job.c1.success")
    await replies.wait_for(
        lambda ms: (
            {m.correlation_id for m in ms if json.loads(m.body)["state"] == "success"}
            == {"w0", "w1", "w2"}
        )
    )

    assert [m.routing_key for m in events.messages] == ["job.c1.running", "job.c1.success"]
    finals = [m for m in replies.messages if json.loads(m.body)["state"] == "success"]
    assert sorted(m.correlation_id for m in finals) == ["w0", "w1", "w2"]
    assert len({m.headers["ce-id"] for m in finals}) == 1


async def test_a_watch_joining_a_polled_job_gets_its_latest_event_at_once(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """The second watch of a running job receives job.c1.running on its reply_to right away."""
    simulator, base_url = sim
    job = simulator.create_job(
        timeline=[{"after": 0, "state": "running"}, {"after": 30, "state": "success"}]
    )
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events, _ = await subscribe(names.events_exchange, "#")
    replies, reply_queue = await subscribe(None)

    await publish(names.watch_queue, {"uuid": job}, correlation_id="first")
    await events.wait_keys("job.c1.running")
    await publish(names.watch_queue, {"uuid": job}, correlation_id="second", reply_to=reply_queue)
    await replies.wait_for(lambda ms: len(ms) >= 1, timeout=5)

    (latest,) = replies.messages
    assert latest.correlation_id == "second"
    assert latest.headers["ce-type"] == "ontap.job.running"
    assert latest.headers["ce-id"] == events.messages[0].headers["ce-id"]


async def test_deadline_ends_the_watch_as_timeout_with_the_last_job(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """A watch whose timeout passes while ONTAP answers ends with watch.c1.timeout and the job."""
    simulator, base_url = sim
    job = simulator.create_job(timeline=[{"after": 0, "state": "running", "message": "working"}])
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events, _ = await subscribe(names.events_exchange, "#")

    await publish(names.watch_queue, {"uuid": job, "timeout": 1})
    (message,) = await events.wait_keys("watch.c1.timeout")

    body = json.loads(message.body)
    validate("job.json", body)
    assert body["state"] == "running"
    assert message.headers["ce-previousstate"] == "running"


async def test_a_resumed_watch_keeps_the_deadline_of_its_checkpoint(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """A request carrying a checkpoint ends at the checkpoint's deadline, not a fresh one."""
    simulator, base_url = sim
    job = simulator.create_job(timeline=[{"after": 0, "state": "running", "message": "working"}])
    await start_worker(make_settings(amqp_url, names, {"c1": cluster(base_url)}))
    events, _ = await subscribe(names.events_exchange, "#")
    saved = Checkpoint("w-resumed", time.time() + 1.5, Progress())

    # The request asks for an hour; the watch it was checkpointed from has 1.5 s left.
    await publish(
        names.watch_queue,
        {"uuid": job, "timeout": 3600},
        headers={checkpoint.HEADER: checkpoint.encode(saved)},
    )
    try:
        (message,) = await events.wait_keys("watch.c1.timeout", timeout=10)
    except AssertionError as exc:
        raise AssertionError(
            f"the watch was not ended by its checkpoint's deadline (1.5 s): {exc}"
        ) from None

    assert json.loads(message.body)["state"] == "running"


async def test_progress_events_when_enabled(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """With publish_progress, a new message in the same state publishes progress.c1.<state>."""
    simulator, base_url = sim
    job = simulator.create_job(
        timeline=[
            {"after": 0, "state": "running", "message": "10% done"},
            {"after": 2.5, "state": "running", "message": "60% done"},
            {"after": 4.0, "state": "success", "message": "Complete: Successful"},
        ]
    )
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)}, publish_progress=True)
    await start_worker(settings)
    events, _ = await subscribe(names.events_exchange, "#")

    await publish(names.watch_queue, {"uuid": job})
    _, progress, _ = await events.wait_keys(
        "job.c1.running", "progress.c1.running", "job.c1.success"
    )

    assert progress.headers["ce-type"] == "ontap.job.progress"
    assert progress.headers["ce-previousstate"] == "running"
    assert json.loads(progress.body)["message"] == "60% done"
    assert [m.routing_key for m in events.messages] == [
        "job.c1.running",
        "progress.c1.running",
        "job.c1.success",
    ]


async def test_ontap_202_body_is_accepted_as_a_watch_request(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """ONTAP's own 202 Accepted body, with a cluster beside it, starts a watch."""
    simulator, base_url = sim
    job = simulator.create_job(timeline=SUCCESS)
    await start_worker(
        make_settings(amqp_url, names, {"c1": cluster(base_url), "c2": cluster(base_url)})
    )
    events, _ = await subscribe(names.events_exchange, "job.*.success")
    accepted = {
        "job": {"uuid": job, "_links": {"self": {"href": f"/api/cluster/jobs/{job}"}}},
        "cluster": "c2",
    }

    validate("watch-request.json", accepted)
    await publish(names.watch_queue, accepted)
    (message,) = await events.wait_keys("job.c2.success")
    assert message.headers["ce-cluster"] == "c2"


async def test_many_jobs_are_read_with_the_collection_endpoint(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """Twenty due jobs cost far fewer calls than twenty GETs per round."""
    simulator, base_url = sim
    jobs = [
        simulator.create_job(
            timeline=[{"after": 0, "state": "running"}, {"after": 1.5, "state": "success"}]
        )
        for _ in range(20)
    ]
    await start_worker(
        make_settings(
            amqp_url, names, {"c1": cluster(base_url)}, poll_interval_min=0.5, poll_interval_max=0.5
        )
    )
    events, _ = await subscribe(names.events_exchange, "job.*.success")

    await asyncio.gather(*(publish(names.watch_queue, {"uuid": job}) for job in jobs))
    await events.wait_for(lambda ms: len(ms) == 20, timeout=20)

    stats = simulator.stats.as_json()
    assert stats["collection"] >= 1
    # Per-job polling needs at least 20 x 4 GETs (1.5 s at 0.5 s); batched, far fewer calls.
    assert stats["requests"] < 30, stats


async def test_batch_false_reads_each_job_with_its_own_get(
    sim, names, amqp_url, start_worker, subscribe, publish
) -> None:
    """With feed = false and batch = false no collection call is made: one GET per job."""
    simulator, base_url = sim
    jobs = [simulator.create_job(timeline=SUCCESS) for _ in range(3)]
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url, batch=False, feed=False)})
    await start_worker(settings)
    events, _ = await subscribe(names.events_exchange, "job.*.success")

    for job in jobs:
        await publish(names.watch_queue, {"uuid": job})
    await events.wait_for(lambda ms: len(ms) == 3)

    stats = simulator.stats.as_json()
    assert stats["collection"] == 0 and stats["single"] >= 3
