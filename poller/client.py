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
from typing import TYPE_CHECKING, Any, Final

from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat

from poller.amqp import connect
from poller.amqp.subscriber import Received, Subscription, publish_request
from poller.errors import BrokerError
from poller.events import PROGRESS_TYPE, routing_key
from poller.models import FINAL_STATES

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

__all__ = ["Event", "connect", "exit_code", "publish_watch", "wait_for_final"]
DEFAULT_QUEUE: Final = "ontap.jobs.watch"
#: ``watch --wait`` exit codes by outcome.
_EXIT_CODES: Final = {"success": 0, "failure": 1, "cancelled": 1, "expired": 1}
_FORMAT: Final = JSONFormat()


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
        return self.key.split(".", 1)[0]

    @property
    def outcome(self) -> str:
        """The job's state (``job``, ``progress``) or the watch's outcome (``watch``)."""
        return self.key.rsplit(".", 1)[-1]

    @property
    def key(self) -> str:
        """The routing key on the events exchange, also for a copy received on ``reply_to``."""
        cluster = str(self.headers.get("ce-cluster", ""))
        state = self.headers.get("ce-previousstate") if self.type == PROGRESS_TYPE else None
        return routing_key(self.type, cluster, state)

    @property
    def final(self) -> bool:
        return self.kind == "watch" or (self.kind == "job" and self.outcome in FINAL_STATES)

    @classmethod
    def from_received(cls, received: Received) -> Event:
        """Read the CloudEvent with the cloudevents SDK; a body that is not one is kept as text."""
        headers = {k: str(v) for k, v in received.headers.items()}
        try:
            cloudevent = from_binary(
                RabbitMQMessage(headers, received.content_type, received.body), _FORMAT
            )
            data = cloudevent.get_data()
        except (BaseCloudEventException, ValueError, TypeError, KeyError):
            data = None  # not a CloudEvent: shown as it came
        if not isinstance(data, dict):
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
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> str:
    """Ask the poller to watch a job; return the request's correlation_id.

    ``traceparent`` (and ``tracestate``), W3C Trace Context, come back on every event of the
    watch as ``ce-traceparent`` (``ce-tracestate``). Raises ``NotRouted`` when no worker has
    declared ``queue`` yet (nothing is lost silently).
    """
    correlation_id = correlation_id or str(uuidlib.uuid4())
    headers = {"traceparent": traceparent, "tracestate": tracestate}
    await publish_request(
        connection,
        queue,
        request_body(job_uuid, cluster, timeout),
        correlation_id=correlation_id,
        reply_to=reply_to,
        message_id=correlation_id,
        headers={k: v for k, v in headers.items() if v is not None},
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
    traceparent: str | None = None,
    tracestate: str | None = None,
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
            traceparent=traceparent,
            tracestate=tracestate,
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
