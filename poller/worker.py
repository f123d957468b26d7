"""The worker: watch requests in from the broker, one scheduler and dispatcher per cluster.

``Worker`` only wires the parts together and owns the lifecycle: a request becomes a ``Watch``
handed to its cluster's dispatcher, which owns it; the cluster's scheduler is told to read the job.
On SIGTERM or SIGINT it stops consuming, lets the work under way reach a safe point for a moment,
cancels the rest and closes its connections, leaving every unfinished watch unacknowledged for the
broker to hand out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from structlog.contextvars import bound_contextvars

from poller import checkpoint, tracecontext
from poller.amqp.broker import Broker, Delivery, discovery_queue
from poller.amqp.lease import Lease
from poller.checkpoint import Checkpoint
from poller.config import Settings
from poller.dispatcher import Admission, Dispatcher
from poller.errors import BrokerError, InvalidRequest
from poller.events import Envelope
from poller.metrics import Metrics
from poller.models import WatchRequest, parse_watch_request
from poller.ontap import OntapClient, batch_size, build_http_client
from poller.scheduler import ClusterScheduler, Reader
from poller.tracking import Policy, Progress
from poller.watch import Outbox, Watch

log = structlog.get_logger(__name__)
#: Work under way gets this long to publish and settle before it is cancelled at shutdown.
SHUTDOWN_GRACE_S = 2.0


class BrokerOutbox:
    """``watch.Outbox`` on top of ``Broker``, counting what it publishes."""

    def __init__(self, broker: Broker, metrics: Metrics) -> None:
        self._broker = broker
        self._metrics = metrics

    async def publish_event(self, envelope: Envelope) -> None:
        await self._broker.publish_event(envelope)
        self._metrics.events_published.labels(envelope.type).inc()

    async def publish_reply(self, envelope: Envelope, reply_to: str) -> None:
        await self._broker.publish_reply(envelope, reply_to)

    async def requeue_watch(self, watch: Watch, value: str) -> None:
        assert isinstance(watch.delivery, Delivery)
        await self._broker.requeue(watch.delivery, {checkpoint.HEADER: value})
        self._metrics.checkpoints.inc()


@dataclass(frozen=True, slots=True)
class Cluster:
    """One configured cluster's parts: what to read and when, and who waits on what."""

    scheduler: ClusterScheduler
    dispatcher: Dispatcher

    def tasks(self) -> list[asyncio.Task[None]]:
        name = self.scheduler.cluster
        return [
            asyncio.create_task(self.scheduler.run(), name=f"reads:{name}"),
            asyncio.create_task(self.dispatcher.run(), name=f"watches:{name}"),
        ]

    async def wait_idle(self) -> None:
        await asyncio.gather(self.scheduler.wait_idle(), self.dispatcher.wait_idle())

    def discovering(self, on: bool, metrics: Metrics) -> None:
        """This worker won (or lost) the cluster's discovery lease."""
        name = self.scheduler.cluster
        metrics.discoverer.labels(name).set(1 if on else 0)
        if on:
            log.warning("discovery.active", cluster=name)
        else:
            log.info("discovery.standby", cluster=name)
        self.scheduler.discover(on)

    def admit(self, watch: Watch, progress: Progress, *, resumed: bool) -> Admission:
        """Hand a watch to the dispatcher, and have its job read if it needs to be."""
        admission = self.dispatcher.add(watch, progress, resumed=resumed)
        if admission is not Admission.SETTLED:
            self.scheduler.want(watch.request.uuid, fresh=admission is Admission.NEW)
        return admission


def build_cluster(
    settings: Settings,
    name: str,
    client: Reader,
    *,
    outbox: Outbox,
    metrics: Metrics,
    clock: Callable[[], float],
) -> Cluster:
    cluster = settings.clusters[name]
    policy = Policy(
        poll_interval_min_s=settings.poll_interval_min,
        poll_interval_max_s=settings.poll_interval_max,
        publish_progress=settings.publish_progress,
    )
    # The dispatcher asks the scheduler whether a read is under way, and tells it when nobody
    # waits on a job any more. The scheduler needs the dispatcher to exist first, so these two
    # reach it through the name bound just below.
    scheduler: ClusterScheduler

    def reading(job_uuid: str) -> bool:
        return scheduler.reading(job_uuid)

    def idle(job_uuid: str) -> None:
        scheduler.drop(job_uuid)

    dispatcher = Dispatcher(
        name,
        outbox,
        publish_progress=settings.publish_progress,
        checkpoint_interval_s=settings.checkpoint_interval,
        reading=reading,
        on_idle=idle,
        metrics=metrics,
        clock=clock,
    )
    scheduler = ClusterScheduler(
        client,
        dispatcher,
        policy,
        feed=cluster.feed,
        batch=cluster.batch,
        batch_size=batch_size(cluster.url),
        metrics=metrics,
        clock=clock,
    )
    return Cluster(scheduler, dispatcher)


class Worker:
    """One worker process: consumes watch requests and reads their jobs until they end."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        clients: dict[str, OntapClient],
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.metrics = metrics or Metrics()
        self._clients = clients
        self._clock = clock
        outbox = BrokerOutbox(broker, self.metrics)
        self.clusters = {
            name: build_cluster(
                settings, name, client, outbox=outbox, metrics=self.metrics, clock=clock
            )
            for name, client in clients.items()
        }
        self._cluster_names = frozenset(clients)

    @property
    def ready(self) -> bool:
        return self.broker.consuming

    async def run(self, stop: asyncio.Event) -> None:
        """Declare, consume and read until ``stop`` is set; then shut down cleanly."""
        await self.broker.declare(prefetch=self.settings.max_watches)
        self.broker.on_reconnect(self._on_reconnect)
        loops = [task for cluster in self.clusters.values() for task in cluster.tasks()]
        await self.broker.consume(self.on_delivery)
        leases = self._discovery_leases()
        loops += [asyncio.create_task(lease.run(), name=lease.queue_name) for lease in leases]
        log.info(
            "worker.started",
            clusters=sorted(self.clusters),
            queue=self.broker.topology.watch_queue,
            node=self.broker.node,
        )
        try:
            await stop.wait()
        finally:
            log.info("worker.stopping")
            # Discovery first: another worker takes over while this one finishes its watches.
            await asyncio.gather(*(lease.stop() for lease in leases))
            await self.broker.stop_consuming()
            await self._drain(loops)
            await self.broker.close()
            await asyncio.gather(*(c.aclose() for c in self._clients.values()))
            log.info("worker.stopped")

    def _discovery_leases(self) -> list[Lease]:
        """Stand by for the discovery of every cluster that says ``discover = true``."""
        leases = []
        for name, cluster in self.clusters.items():
            if not self.settings.clusters[name].discover:
                continue
            self.metrics.discoverer.labels(name).set(0)
            lease = Lease(
                self.broker.connection,
                discovery_queue(self.broker.topology, name),
                on_change=functools.partial(cluster.discovering, metrics=self.metrics),
                renew_s=self.settings.checkpoint_interval,
            )
            leases.append(lease)
        return leases

    async def _drain(self, loops: list[asyncio.Task[None]]) -> None:
        # Publishes are idempotent (same ids) and unacked watches come back, so cancelling is safe;
        # the grace period only spares subscribers a few duplicates.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_GRACE_S):
                await asyncio.gather(*(c.wait_idle() for c in self.clusters.values()))
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def _on_reconnect(self) -> None:
        self.metrics.reconnects.inc()
        log.warning("broker.reconnected", node=self.broker.node)
        for cluster in self.clusters.values():
            # Housekeeping drops the deliveries of the dead channel.
            cluster.dispatcher.sweep(self._clock())
            cluster.scheduler.wake()

    async def on_delivery(self, delivery: Delivery) -> None:
        """Accept a watch request, or dead-letter it with the reason."""
        try:
            request = parse_watch_request(
                delivery.body,
                self._cluster_names,
                content_type=delivery.content_type,
                content_encoding=delivery.content_encoding,
            )
            raw = delivery.headers.get(checkpoint.HEADER)
            saved = checkpoint.decode(raw) if raw is not None else None
        except InvalidRequest as exc:
            await self._dead_letter(delivery, exc)
            return
        # Every line logged about this watch, here and in what it spawns, names its job and cluster.
        with bound_contextvars(job=request.uuid, cluster=request.cluster):
            self._start_watch(delivery, request, saved)

    def _start_watch(
        self, delivery: Delivery, request: WatchRequest, saved: Checkpoint | None
    ) -> None:
        now = self._clock()
        resumed = saved is not None
        if saved is None:
            timeout_s = request.timeout_s or self.settings.watch_timeout
            saved = Checkpoint(watch_id=str(uuidlib.uuid4()), deadline_at=now + timeout_s)
        watch = Watch(
            watch_id=saved.watch_id,
            request=request,
            delivery=delivery,
            deadline_at=saved.deadline_at,
            held_since=now,
            seen=(saved.progress.state, saved.progress.changes),
            saved_changes=saved.progress.changes,
            key=delivery.correlation_id or delivery.message_id or saved.watch_id,
            trace=tracecontext.from_headers(delivery.headers),
        )
        admission = self.clusters[request.cluster].admit(watch, saved.progress, resumed=resumed)
        if admission is Admission.SETTLED:
            return
        joined = admission is Admission.JOINED
        if resumed:
            # A checkpoint coming back: the same watch, one line per change of state.
            log.debug("watch.resumed", joined=joined, state=saved.progress.state)
        else:
            log.info(
                "watch.started",
                joined=joined,
                timeout_s=round(saved.deadline_at - now, 3),
                correlation_id=delivery.correlation_id,
            )

    async def _dead_letter(self, delivery: Delivery, exc: InvalidRequest) -> None:
        reason = str(exc)
        try:
            await self.broker.dead_letter(delivery, reason)
            await delivery.ack()
        except BrokerError as err:
            log.warning("request.dead_letter_failed", reason=reason, error=str(err))
            # Handed back now, not held until the consumer timeout closes the channel (and every
            # watch on it): it comes back and is rejected again, at most the queue's delivery
            # limit times before the broker dead-letters it itself.
            with contextlib.suppress(BrokerError):
                await delivery.give_back()
            return
        self.metrics.dead_lettered.labels(exc.kind).inc()
        log.warning("request.dead_lettered", reason=reason, kind=exc.kind)


def build_clients(settings: Settings, metrics: Metrics) -> dict[str, OntapClient]:
    return {
        name: OntapClient(
            name,
            build_http_client(cluster),
            metrics=metrics,
            max_concurrent_requests=cluster.max_concurrent_requests,
        )
        for name, cluster in settings.clusters.items()
    }
