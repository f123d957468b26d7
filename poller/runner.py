"""Running the worker as a process: connections, the ops server, signals."""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import Final

import structlog

from poller import tracing
from poller.amqp.broker import Broker, Topology
from poller.config import Settings
from poller.metrics import Metrics
from poller.ops import OpsServer, create_ops_app
from poller.worker import Worker, build_clients

log = structlog.get_logger(__name__)
#: How long ``run`` waits for RabbitMQ at start-up before giving up with one clear line.
BROKER_STARTUP_WAIT_S = 60.0
#: The cyclic garbage collector's thresholds in a worker process: CPython's (700, 10, 10), but
#: a full collection considered after 100 collections of the middle generation instead of 10.
GC_THRESHOLDS: Final = (700, 10, 100)


def tune_gc() -> None:
    """Make full collections rarer in a process that is a worker.

    A worker holds every watch it was handed (up to ``max_watches``) as a few dozen long-lived
    objects: the delivery, its hand-over, the job's record. While thousands arrive at once,
    CPython's default thresholds have the collector walk all of them again each time the heap
    grew by a quarter: a quarter of the worker's CPU in such a burst, for a few hundred objects
    freed each time. The young generations keep CPython's thresholds, so short-lived garbage is
    collected as promptly as before and memory under churn stays the same.
    """
    gc.set_threshold(*GC_THRESHOLDS)


def topology_of(settings: Settings) -> Topology:
    return Topology(
        watch_queue=settings.watch_queue,
        dead_letter_queue=settings.dead_letter_queue,
        events_exchange=settings.events_exchange,
    )


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; a second one is left to the default (immediate) handler."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):

        def on_signal(sig: signal.Signals = sig) -> None:
            log.info("worker.signal", signal=sig.name)
            stop.set()
            loop.remove_signal_handler(sig)

        loop.add_signal_handler(sig, on_signal)


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run one worker until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is not given)."""
    if stop is None:
        stop = asyncio.Event()
        install_stop_signals(stop)
    metrics = Metrics()
    if tracing.configure():
        log.info("tracing.enabled")
    worker: Worker | None = None
    ops = None
    if settings.http_port:
        # Up before the broker: /healthz answers (and /readyz says 503) while RabbitMQ is awaited.
        ops = OpsServer(
            create_ops_app(metrics, lambda: worker is not None and worker.ready),
            settings.http_port,
        )
        port = await ops.start()
        log.info("ops.listening", port=port)
    try:
        broker = await Broker.connect(settings, topology_of(settings), wait_s=BROKER_STARTUP_WAIT_S)
        worker = Worker(settings, broker, build_clients(settings, metrics), metrics=metrics)
        await worker.run(stop)
    finally:
        if ops is not None:
            await ops.stop()
