"""One cluster's scheduler and dispatcher, wired as the worker wires them, against the simulator.

The ONTAP client is the real one; it reaches the simulator in process (no socket) through a
transport that counts calls and how many ran at once. The simulator runs on a clock of its own,
two days behind the worker's, which only the test moves: jobs advance when the test says so,
and every test also proves that the worker never takes the cluster's time from its own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from poller import checkpoint
from poller.config import ClusterSettings, Settings
from poller.dispatcher import Admission
from poller.metrics import Metrics
from poller.models import WatchRequest
from poller.ontap import OntapClient, RetryPolicy, build_http_client
from poller.simulator import Simulator, create_app
from poller.simulator.testing import FakeClock
from poller.tracking import Progress
from poller.watch import Watch
from poller.worker import Cluster, build_cluster
from tests.fakes import FakeDelivery, FakeOutbox

USER, PASSWORD = "admin", "s3cr3t-Pa55w0rd-7f3a"


@dataclass
class CountingTransport(httpx.AsyncBaseTransport):
    """Passes requests on; keeps them, counts how many ran at once, can add a delay."""

    inner: httpx.AsyncBaseTransport
    delay_s: float = 0.0
    requests: list[httpx.Request] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await self.inner.handle_async_request(request)
        finally:
            self.running -= 1

    def queries(self) -> list[dict[str, str]]:
        """The query of each collection call, without ``fields`` and ``max_records``."""
        return [
            {k: v for k, v in r.url.params.items() if k not in {"fields", "max_records"}}
            for r in self.requests
            if r.url.path == "/api/cluster/jobs"
        ]

    def by_uuid(self) -> int:
        """Reads by uuid so far: single GETs and uuid=a|b|… batches (not the feed's queries)."""
        return len(self.singles()) + sum("uuid" in q for q in self.queries())

    def singles(self) -> list[str]:
        return [r.url.path.rsplit("/", 1)[-1] for r in self.requests if r.url.path.count("/") == 4]


@dataclass
class Rig:
    sim: Simulator
    clock: FakeClock
    cluster: Cluster
    outbox: FakeOutbox
    transport: CountingTransport
    metrics: Metrics
    #: Checkpoint copies the broker handed back.
    copies: list[Watch] = field(default_factory=list)

    def watch(
        self,
        job: str,
        *,
        watch_id: str | None = None,
        deadline_in_s: float = 3600.0,
        saved: int = 0,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> Watch:
        """A held delivery whose own checkpoint carries ``saved`` changes."""
        watch_id = watch_id or str(uuidlib.uuid4())
        return Watch(
            watch_id=watch_id,
            request=WatchRequest(job, "c1", None),
            delivery=FakeDelivery(reply_to=reply_to, correlation_id=correlation_id),
            deadline_at=time.time() + deadline_in_s,
            held_since=time.time(),
            key=correlation_id or watch_id,
            saved_changes=saved,
        )

    def admit(
        self, watch: Watch, progress: Progress | None = None, *, resumed: bool = False
    ) -> Admission:
        return self.cluster.admit(watch, progress or Progress(), resumed=resumed)

    def watch_jobs(self, jobs: list[str]) -> list[Watch]:
        watches = [self.watch(job) for job in jobs]
        for watch in watches:
            self.admit(watch)
        return watches

    async def until(self, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    if check():
                        return
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(
                f"not within {timeout_s} s; events: {self.outbox.routing_keys()}"
            ) from None

    def deliver_copy(self, watch: Watch, value: str) -> None:
        """The broker hands the re-enqueued copy back, a moment later, as a resumed watch."""
        saved = checkpoint.decode(value)
        delivery = FakeDelivery(
            reply_to=watch.delivery.reply_to, correlation_id=watch.delivery.correlation_id
        )
        copy = Watch(
            watch_id=saved.watch_id,
            request=watch.request,
            delivery=delivery,
            deadline_at=saved.deadline_at,
            held_since=time.time(),
            seen=(saved.progress.state, saved.progress.changes),
            saved_changes=saved.progress.changes,
            key=watch.key,
        )
        self.copies.append(copy)
        asyncio.get_running_loop().call_soon(
            lambda: self.cluster.admit(copy, saved.progress, resumed=True)
        )

    def finished(self, job: str) -> bool:
        """The job's end (or its watches' end) was published and nobody here waits on it."""
        ends = {"success", "failure", "cancelled", "expired"}
        published = any(
            e.headers["ce-subject"] == job
            and (e.routing_key.startswith("watch.") or e.routing_key.rsplit(".", 1)[-1] in ends)
            for e in self.outbox.events
        )
        return published and not self.cluster.dispatcher.holds(job)

    def client_apps(self) -> set[str | None]:
        return {r.headers.get("X-Dot-Client-App") for r in self.transport.requests}


@contextlib.asynccontextmanager
async def cluster_rig(
    *,
    sim: Simulator | None = None,
    outbox: FakeOutbox | None = None,
    delay_s: float = 0.0,
    retry: RetryPolicy | None = None,
    **settings: Any,
) -> AsyncIterator[Rig]:
    """A running cluster ``c1``; ``settings`` are top-level keys or keys of the cluster's table."""
    clock = FakeClock(now=time.time() - 2 * 86400)
    sim = sim or Simulator(username=USER, password=PASSWORD, clock=clock)
    clock = sim.clock if isinstance(sim.clock, FakeClock) else clock
    cluster_keys = set(ClusterSettings.model_fields)
    table = {k: v for k, v in settings.items() if k in cluster_keys}
    top: dict[str, Any] = {"poll_interval_min": 0.05, "poll_interval_max": 0.2, "http_port": 0}
    top.update({k: v for k, v in settings.items() if k not in cluster_keys})
    cluster_settings = ClusterSettings(
        url="http://ontap", username=USER, password=PASSWORD, **table
    )
    config = Settings.model_validate(top).model_copy(update={"clusters": {"c1": cluster_settings}})
    transport = CountingTransport(httpx.ASGITransport(app=create_app(sim)), delay_s=delay_s)
    http = build_http_client(cluster_settings, transport=transport)
    metrics = Metrics()
    client = OntapClient(
        "c1",
        http,
        retry=retry or RetryPolicy.instant(),
        metrics=metrics,
        max_concurrent_requests=cluster_settings.max_concurrent_requests,
    )
    outbox = outbox or FakeOutbox()
    cluster = build_cluster(config, "c1", client, outbox=outbox, metrics=metrics, clock=time.time)
    tasks = cluster.tasks()
    rig = Rig(sim, clock, cluster, outbox, transport, metrics)
    if outbox.deliver_copy is None:
        outbox.deliver_copy = rig.deliver_copy
    try:
        yield rig
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.aclose()
