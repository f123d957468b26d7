"""The ``watch`` and ``events`` commands, on top of ``poller.client``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from poller.broker import Subscription, connect
from poller.client import Event, exit_code, publish_watch, wait_for_final
from poller.config import Settings


async def watch(
    settings: Settings,
    job_uuid: str,
    cluster: str | None,
    timeout: float | None,
    *,
    wait: bool,
    out: TextIO = sys.stdout,
) -> int:
    connection = await connect(settings.amqp_url, name="ontap-job-poller watch")
    async with connection:
        if not wait:
            correlation_id = await publish_watch(
                connection, job_uuid, cluster=cluster, timeout=timeout, queue=settings.watch_queue
            )
            print(f"published watch of {job_uuid} (correlation_id {correlation_id})", file=out)
            return 0
        started = time.monotonic()

        def show(event: Event) -> None:
            elapsed = time.monotonic() - started
            message = event.data.get("message") or event.data.get("error", {}).get("message", "")
            print(f"{elapsed:7.1f}s  {event.key:<30} {message}", file=out, flush=True)

        final = await wait_for_final(
            connection,
            job_uuid,
            cluster=cluster,
            timeout=timeout,
            queue=settings.watch_queue,
            on_event=show,
        )
        return exit_code(final)


async def print_events(
    settings: Settings, bindings: tuple[str, ...], out: TextIO = sys.stdout
) -> None:
    connection = await connect(settings.amqp_url, name="ontap-job-poller events")
    async with connection:
        subscription = await Subscription.open(
            connection, exchange=settings.events_exchange, bindings=bindings
        )
        async for received in subscription:
            print(Event.from_received(received).as_json(), file=out, flush=True)
