"""Every metric the Grafana dashboard charts is one a real worker serves on /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.amqp import delete_queues
from tests import dashboard
from tests.integration.conftest import cluster, make_settings
from tests.integration.test_ops import free_port, get, sample, start, until

pytestmark = pytest.mark.integration

#: What the dashboard must chart: section 6's instruments, the change feed and discovery.
CHARTED = {
    "ontap_poller_watches_active",
    "ontap_poller_ontap_requests_total",
    "ontap_poller_ontap_request_seconds_bucket",
    "ontap_poller_events_published_total",
    "ontap_poller_requests_dead_lettered_total",
    "ontap_poller_checkpoints_total",
    "ontap_poller_broker_reconnects_total",
    "ontap_poller_feed_enabled",
    "ontap_poller_discoverer",
    "ontap_poller_jobs_discovered_total",
}


@pytest.fixture
async def lease_cleanup(amqp_url, names) -> AsyncIterator[None]:
    """The discovery lease queue of cluster c1 goes with the test's other names."""
    yield
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await delete_queues(connection, [f"{names.watch_queue}.discover.c1"])


async def test_dashboard_queries_only_metrics_that_a_worker_exposes(
    sim, names, amqp_url, subscribe, publish, lease_cleanup
) -> None:
    """A worker that polled, discovered and dead-lettered serves every metric of every panel."""
    simulator, base_url = sim
    port = free_port()
    settings = make_settings(
        amqp_url, names, {"c1": cluster(base_url, discover=True)}, http_port=port
    )
    task, stop = await start(settings)
    try:
        events, _ = await subscribe(names.events_exchange, "#")
        watched = simulator.create_job(timeline=[{"after": 0, "state": "success"}])
        simulator.create_job(timeline=[{"after": 0, "state": "success"}])  # discovered only
        await publish(names.watch_queue, {"uuid": watched, "cluster": "c1"})
        await publish(names.watch_queue, b"not json")
        await events.wait_keys("job.c1.success")

        async def everything_sampled() -> str | None:
            text = (await get(port, "/metrics")).text
            moved = sample(text, "ontap_poller_requests_dead_lettered_total", reason="json")
            found = sample(text, "ontap_poller_jobs_discovered_total", cluster="c1")
            return text if moved and found else None

        text = await until(everything_sampled)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    exposed = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    model = dashboard.load()
    used = dashboard.variable_metrics(model)
    for title, expr in dashboard.expressions(model):
        missing = dashboard.metric_names(expr) - exposed
        assert not missing, f"panel {title!r} queries {sorted(missing)}, not in /metrics"
        used |= dashboard.metric_names(expr)
    assert used <= exposed
    assert used >= CHARTED
