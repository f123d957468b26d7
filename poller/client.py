"""Client API for services that want a job watched: publish a request, wait for its final event.

Example::

    import asyncio
    from poller.client import connect, wait_for_final

    async def main() -> None:
        connection = await connect("amqp://guest:guest@localhost:5672/")
        async with connection:
            final = await wait_for_final(connection, "1cd8a442-86d1-11e0-ae1c-123478563412",
                                         cluster="cluster1", timeout=3600)
            print(final.outcome, final.data.get("message"))

    asyncio.run(main())
"""

from __future__ import annotations

import json
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aio_pika.abc import AbstractConnection

from poller.broker import Received, Subscription, connect, publish_request
from poller.errors import BrokerError
from poller.models import FINAL_STATES

__all__ = ["Event", "connect", "exit_code", "publish_watch", "wait_for_final"]
DEFAULT_QUEUE: Final = "ontap.jobs.watch"
#: ``watch --wait`` exit codes by outcome.
_EXIT_CODES: Final = {"success": 0, "failure": 1, "cancelled": 1, "expired": 1}


@dataclass(frozen=True, slots=True)
class Event:
    """One event as a subscriber sees it."""

    routing_key: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    data: dict[str, Any]

    @property
    def type(self) -> str:
        """``ce-type``: ``ontap.job.<state>``, ``ontap.job.progress`` or ``ontap.watch.<outcome>``."""
        return str(self.headers.get("ce-type", ""))

    @property
    def kind(self) -> str:
        """``job``, ``progress`` or ``watch``."""
        if self.type == "ontap.job.progress":
            return "progress"
        return self.type.removeprefix("ontap.").split(".", 1)[0]

    @property
    def outcome(self) -> str:
        """The job's state (``job``, ``progress``) or the watch's outcome (``watch``)."""
        if self.kind == "progress":
            return str(self.headers.get("ce-previousstate", ""))
        return self.type.rsplit(".", 1)[-1]

    @property
    def key(self) -> str:
        """The routing key on the events exchange, also for a copy received on ``reply_to``."""
        return f"{self.kind}.{self.headers.get('ce-cluster', '')}.{self.outcome}"

    @property
    def final(self) -> bool:
        return self.kind == "watch" or (self.kind == "job" and self.outcome in FINAL_STATES)

    @classmethod
    def from_received(cls, received: Received) -> Event:
        try:
            data = json.loads(received.body)
        except ValueError:
            data = {"raw": received.body.decode(errors="replace")}
        return cls(received.routing_key, received.headers, received.properties, data)

    def as_json(self) -> str:
        return json.dumps(
            {
                "routing_key": self.routing_key,
                "headers": self.headers,
                "properties": self.properties,
                "body": self.data,
            },
            default=str,
        )


def exit_code(event: Event) -> int:
    """0 on success; 1 on failure, cancelled or expired; 2 on not_found, timeout or error."""
    return _EXIT_CODES.get(event.outcome, 2) if event.kind == "job" else 2


def request_body(job_uuid: str, cluster: str | None, timeout: float | None) -> bytes:
    body: dict[str, Any] = {"uuid": job_uuid}
    if cluster is not None:
        body["cluster"] = cluster
    if timeout is not None:
        body["timeout"] = timeout
    return json.dumps(body).encode()


async def publish_watch(
    connection: AbstractConnection,
    job_uuid: str,
    *,
    cluster: str | None = None,
    timeout: float | None = None,
    queue: str = DEFAULT_QUEUE,
    correlation_id: str | None = None,
    reply_to: str | None = None,
) -> str:
    """Ask the poller to watch a job; return the request's correlation_id.

    Raises ``NotRouted`` when no worker has declared ``queue`` yet (nothing is lost silently).
    """
    correlation_id = correlation_id or str(uuidlib.uuid4())
    await publish_request(
        connection,
        queue,
        request_body(job_uuid, cluster, timeout),
        correlation_id=correlation_id,
        reply_to=reply_to,
        message_id=correlation_id,
    )
    return correlation_id


async def wait_for_final(
    connection: AbstractConnection,
    job_uuid: str,
    *,
    cluster: str | None = None,
    timeout: float | None = None,
    queue: str = DEFAULT_QUEUE,
    on_event: Callable[[Event], None] | None = None,
) -> Event:
    """Watch a job and return its final event (``job.*`` end state, or ``watch.*``).

    Events arrive on a private reply queue; ``on_event`` sees each one, the final one included.
    """
    subscription = await Subscription.open(connection)
    try:
        correlation_id = await publish_watch(
            connection,
            job_uuid,
            cluster=cluster,
            timeout=timeout,
            queue=queue,
            reply_to=subscription.name,
        )
        async for received in subscription:
            event = Event.from_received(received)
            if event.properties.get("correlation_id") != correlation_id:
                continue
            if on_event is not None:
                on_event(event)
            if event.final:
                return event
    finally:
        await subscription.close()
    raise BrokerError("the reply queue closed before the final event arrived")
