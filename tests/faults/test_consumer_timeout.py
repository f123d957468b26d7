"""Jobs that outlive RabbitMQ's consumer timeout: checkpoints keep their deliveries fresh.

The private node closes any channel holding a delivery unacknowledged for more than 10 s
(``consumer_timeout`` = 10000 in its rabbitmq.conf, checked every second).
"""

from __future__ import annotations

import re

import pytest

from tests.faults.conftest import cluster_table, settled, worker_config

pytestmark = pytest.mark.faults

#: How RabbitMQ 3.10 reports a delivery held past consumer_timeout.
CONSUMER_TIMEOUT_LOG = re.compile(r"delivery acknowledgement on channel \d+ timed out", re.I)


@pytest.mark.timeout(240)
async def test_a_90_s_job_ends_once_without_the_broker_closing_the_channel(
    broker, broker_log, names, sim, workers, events, publish
) -> None:
    """consumer_timeout 10 s, job 90 s, checkpoints every 3 s: one success, no channel closed."""
    simulator, base_url = sim
    job = simulator.create_job(
        timeline=[
            {"after": 0, "state": "running", "message": "Transferring"},
            {"after": 90, "state": "success", "message": "Complete: Successful"},
        ]
    )
    worker = workers(
        worker_config(
            broker, names, poll_interval_max=5.0, clusters={"c1": cluster_table(base_url)}
        )
    )
    await worker.wait_ready()

    await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
    await events.wait_for(
        lambda es: any(e.routing_key == "job.c1.success" for e in es), timeout_s=180
    )
    await settled([worker], broker.url, names.watch_queue)

    assert [e.routing_key for e in events.events] == ["job.c1.running", "job.c1.success"]
    samples = await worker.metrics()
    assert samples["ontap_poller_broker_reconnects_total"] == 0
    # Every 3 s for 90 s: about 30 copies, each confirmed before its predecessor was acked.
    assert samples["ontap_poller_checkpoints_total"] >= 20, samples
    assert not CONSUMER_TIMEOUT_LOG.search(broker_log())
    logged = set(worker.log_events())
    assert not logged & {"broker.reconnected", "watch.ack_failed", "watch.checkpoint_failed"}


@pytest.mark.timeout(180)
async def test_without_checkpoints_the_broker_closes_the_channel_and_the_watch_survives(
    broker, broker_log, names, sim, workers, events, publish
) -> None:
    """The control: with checkpoints too rare, the node does time the delivery out; nothing lost."""
    simulator, base_url = sim
    job = simulator.create_job(
        timeline=[
            {"after": 0, "state": "running", "message": "Transferring"},
            {"after": 18, "state": "success", "message": "Complete: Successful"},
        ]
    )
    config = worker_config(
        broker, names, checkpoint_interval=600.0, clusters={"c1": cluster_table(base_url)}
    )
    worker = workers(config)
    await worker.wait_ready()

    await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
    await events.wait_for(
        lambda es: any(e.routing_key == "job.c1.success" for e in es), timeout_s=120
    )
    await settled([worker], broker.url, names.watch_queue)

    assert CONSUMER_TIMEOUT_LOG.search(broker_log()), "the node never timed the delivery out"
    samples = await worker.metrics()
    assert samples["ontap_poller_broker_reconnects_total"] >= 1  # the worker saw its channel go
    successes = [e for e in events.events if e.routing_key == "job.c1.success"]
    assert len({e.ce_id for e in successes}) == 1
    assert worker.problems() == []
