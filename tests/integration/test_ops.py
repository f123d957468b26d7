"""/healthz, /readyz and /metrics of a running worker, scraped over real HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from poller.config import Settings
from poller.runner import run_worker
from poller.simulator import FaultPlan
from tests.integration.conftest import cluster, make_settings, wait_for_queue

pytestmark = pytest.mark.integration

TIMELINE = [
    {"after": 0, "state": "queued", "message": "Queued"},
    {"after": 0.3, "state": "running", "message": "Creating volume"},
    {"after": 0.6, "state": "success", "message": "Complete: Successful"},
]


def free_port() -> int:
    """A port nothing listens on right now (``http_port = 0`` means "off", not "any")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition, None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` with these labels, whatever its other labels."""
    return sum(
        float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def until(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.05)


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        return await http.get(path)


async def start(settings: Settings) -> tuple[asyncio.Task[None], asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    await wait_for_queue(settings.amqp_url[0], settings.watch_queue, task)
    return task, stop


async def test_metrics_count_calls_events_checkpoints_and_dead_letters(
    sim, names, amqp_url, subscribe, publish
) -> None:
    """After one job and one bad request, every instrument of the operations guide has moved."""
    simulator, base_url = sim
    port = free_port()
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)}, http_port=port)
    task, stop = await start(settings)
    try:
        events, _ = await subscribe(names.events_exchange, "#")
        job = simulator.create_job(timeline=TIMELINE)
        await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
        await publish(names.watch_queue, b"not json at all")
        await events.wait_keys("job.c1.success")

        async def dead_lettered() -> float | None:
            text = (await get(port, "/metrics")).text
            return sample(text, "ontap_poller_requests_dead_lettered_total", reason="json")

        assert await until(dead_lettered) == 1.0
        response = await get(port, "/metrics")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for state in ("queued", "running", "success"):
        assert sample(text, "ontap_poller_events_published_total", type=f"ontap.job.{state}") == 1
    assert total(text, "ontap_poller_ontap_requests_total", cluster="c1", outcome="ok") >= 3
    assert total(text, "ontap_poller_ontap_request_seconds_count", cluster="c1") >= 3
    # One checkpoint per change of state before the final one (queued, running).
    assert (sample(text, "ontap_poller_checkpoints_total") or 0) >= 2
    assert sample(text, "ontap_poller_watches_active", cluster="c1") == 0
    assert sample(text, "ontap_poller_broker_reconnects_total") == 0


async def test_watches_active_counts_a_running_watch(sim, names, amqp_url, publish) -> None:
    """While a job runs, the gauge of active watches of its cluster reads 1."""
    simulator, base_url = sim
    port = free_port()
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)}, http_port=port)
    task, stop = await start(settings)
    try:
        job = simulator.create_job(timeline=[{"after": 0, "state": "running"}])
        await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})

        assert await until(lambda: _active_watches(port, 1))
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_readyz_is_200_while_consuming_and_healthz_always(sim, names, amqp_url) -> None:
    """A consuming worker answers 200 on both probes, and 404 elsewhere."""
    _, base_url = sim
    port = free_port()
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)}, http_port=port)
    task, stop = await start(settings)
    try:
        ready = await until(
            lambda: _status(port, "/readyz", 200),
        )
        healthz = await get(port, "/healthz")
        missing = await get(port, "/nothing-here")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert ready
    assert healthz.status_code == 200
    assert missing.status_code == 404


async def _active_watches(port: int, count: int) -> bool:
    text = (await get(port, "/metrics")).text
    return sample(text, "ontap_poller_watches_active", cluster="c1") == count


async def _status(port: int, path: str, status: int) -> bool:
    return (await get(port, path)).status_code == status


async def test_readyz_is_503_until_the_broker_answers(names, amqp_url) -> None:
    """Waiting for RabbitMQ at start-up: alive (healthz 200) but not ready (readyz 503)."""
    port = free_port()
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    settings = make_settings(nowhere, names, {}, http_port=port)
    task = asyncio.create_task(run_worker(settings, asyncio.Event()))
    try:
        healthz = await until(lambda: _reachable(port, "/healthz"))
        readyz = await get(port, "/readyz")
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert healthz.status_code == 200
    assert readyz.status_code == 503


async def _reachable(port: int, path: str) -> httpx.Response | None:
    try:
        return await get(port, path)
    except httpx.ConnectError:
        return None


@pytest.mark.timeout(60)
async def test_readyz_turns_503_as_soon_as_shutdown_begins(sim, names, amqp_url, publish) -> None:
    """On stop the worker stops consuming first: readyz says 503 while in-flight polls drain."""
    simulator, base_url = sim
    port = free_port()
    settings = make_settings(amqp_url, names, {"c1": cluster(base_url)}, http_port=port)
    task, stop = await start(settings)
    try:
        assert await until(lambda: _status(port, "/readyz", 200))
        # Every ONTAP call now takes 1.5 s, so a poll is in flight when the stop comes.
        simulator.faults = FaultPlan(latency_ms=(1500, 1500))
        job = simulator.create_job(timeline=[{"after": 0, "state": "running"}])
        await publish(names.watch_queue, {"uuid": job, "cluster": "c1"})
        await until(lambda: _active_watches(port, 1))
        stop.set()
        readyz = await until(lambda: _reachable(port, "/readyz"))
        while readyz.status_code == 200:
            readyz = await until(lambda: _reachable(port, "/readyz"))
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert readyz.status_code == 503
