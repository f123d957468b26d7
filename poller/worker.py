"""The worker: watch requests in from the broker, per-cluster schedulers, events out.

``Worker`` wires the adapters together and owns the lifecycle. On SIGTERM or SIGINT it stops
consuming, lets in-flight polls reach a safe point for a moment, cancels the rest and closes its
connections, leaving every unfinished watch unacknowledged for the broker to hand out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid as uuidlib
from collections.abc import Callable

import structlog
from structlog.contextvars import bound_contextvars

from poller import checkpoint
from poller.amqp.broker import Broker, Delivery
from poller.checkpoint import Checkpoint
from poller.config import Settings
from poller.errors import BrokerError, InvalidRequest
from poller.events import Envelope
from poller.metrics import Metrics
from poller.models import WatchRequest, parse_watch_request
from poller.ontap import OntapClient, batch_size, build_http_client
from poller.scheduler import ClusterScheduler
from poller.tracking import Policy
from poller.watches import Dispatcher, Watch

log = structlog.get_logger(__name__)
#: In-flight polls get this long to publish and settle before they are cancelled at shutdown.
SHUTDOWN_GRACE_S = 2.0


class BrokerOutbox:
    """``watches.Outbox`` on top of ``Broker``, counting what it publishes."""

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


class Worker:
    """One worker process: consumes watch requests and polls their jobs until they end."""

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
        policy = Policy(
            poll_interval_min_s=settings.poll_interval_min,
            poll_interval_max_s=settings.poll_interval_max,
            publish_progress=settings.publish_progress,
        )
        outbox = BrokerOutbox(broker, self.metrics)
        self.schedulers: dict[str, ClusterScheduler] = {}
        for name, client in clients.items():
            cluster = settings.clusters[name]
            self.schedulers[name] = ClusterScheduler(
                client,
                Dispatcher(name, outbox, clock=clock),
                policy,
                batch=cluster.batch,
                batch_size=batch_size(cluster.url),
                max_concurrent_requests=cluster.max_concurrent_requests,
                checkpoint_interval_s=settings.checkpoint_interval,
                metrics=self.metrics,
                clock=clock,
            )
        self._cluster_names = frozenset(clients)

    @property
    def ready(self) -> bool:
        return self.broker.consuming

    async def run(self, stop: asyncio.Event) -> None:
        """Declare, consume and poll until ``stop`` is set; then shut down cleanly."""
        await self.broker.declare(prefetch=self.settings.max_watches)
        self.broker.on_reconnect(self._on_reconnect)
        loops = [
            asyncio.create_task(s.run(), name=f"cluster:{n}") for n, s in self.schedulers.items()
        ]
        await self.broker.consume(self.on_delivery)
        log.info(
            "worker.started",
            clusters=sorted(self.schedulers),
            queue=self.broker.topology.watch_queue,
        )
        try:
            await stop.wait()
        finally:
            log.info("worker.stopping")
            await self.broker.stop_consuming()
            await self._drain(loops)
            await self.broker.close()
            await asyncio.gather(*(c.aclose() for c in self._clients.values()))
            log.info("worker.stopped")

    async def _drain(self, loops: list[asyncio.Task[None]]) -> None:
        # Publishes are idempotent (same ids) and unacked watches come back, so cancelling is safe;
        # the grace period only spares subscribers a few duplicates.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_GRACE_S):
                await asyncio.gather(*(s.wait_idle() for s in self.schedulers.values()))
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def _on_reconnect(self) -> None:
        self.metrics.reconnects.inc()
        log.warning("broker.reconnected")
        for scheduler in self.schedulers.values():
            scheduler.wake()  # housekeeping drops the deliveries of the dead channel

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
            await self._start_watch(delivery, request, saved)

    async def _start_watch(
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
        )
        scheduler = self.schedulers[request.cluster]
        if resumed and scheduler.settle_if_ended(watch):
            log.debug("watch.late_copy_settled", state=saved.progress.state)
            return
        entry, joined = scheduler.add(watch, saved.progress)
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
        if joined:
            await scheduler.dispatcher.replay_latest(entry, watch)

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
        name: OntapClient(name, build_http_client(cluster), metrics=metrics)
        for name, cluster in settings.clusters.items()
    }
