"""Pure: the event source's arguments, and an event of the poller as a rulebook event.

A rulebook event is a plain dict, so that a condition reads ``event.job.state``,
``event.job.code`` or ``event.error.code``::

    {"id", "type", "source", "subject", "time", "cluster", "previous_state", "routing_key"}
    + "job": the job object   (ontap.job.<state>, ontap.job.progress, ontap.watch.timeout)
    | "error": ONTAP's error  (ontap.watch.not_found, ontap.watch.error: the inner object of
                               the body {"error": {...}})

The CloudEvent is read with the cloudevents SDK, as any subscriber of the poller would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat

from poller.amqp.subscriber import Received

DEFAULT_AMQP_URL: Final = "amqp://guest:guest@localhost:5672/"
DEFAULT_EXCHANGE: Final = "ontap.jobs"
#: Events whose body is ONTAP's error object ``{"error": {...}}`` rather than a job.
ERROR_TYPES: Final = frozenset({"ontap.watch.not_found", "ontap.watch.error"})
_ARGUMENTS: Final = frozenset({"amqp_url", "exchange", "bindings", "queue"})
_FORMAT: Final = JSONFormat()


@dataclass(frozen=True, slots=True)
class SourceArgs:
    """The arguments of the ``ontap_job_events`` source, checked once at its start."""

    amqp_url: str | list[str] = DEFAULT_AMQP_URL
    exchange: str = DEFAULT_EXCHANGE
    bindings: tuple[str, ...] = ("#",)
    queue: str | None = None

    @classmethod
    def parse(cls, args: Mapping[str, Any]) -> SourceArgs:
        """``ValueError`` naming the argument when one is unknown or of the wrong shape.

        ansible-rulebook adds arguments of its own (``eda_*``); they are left alone.
        """
        unknown = sorted(k for k in args if k not in _ARGUMENTS and not k.startswith("eda_"))
        if unknown:
            raise ValueError(
                f"ontap_job_events: unknown argument {', '.join(unknown)}; "
                f"expected {', '.join(sorted(_ARGUMENTS))}"
            )
        url = args.get("amqp_url", DEFAULT_AMQP_URL)
        if isinstance(url, list | tuple):
            if not url or not all(_text(u) for u in url):
                raise ValueError("ontap_job_events: amqp_url must be a URL or a list of URLs")
            url = list(url)
        elif not _text(url):
            raise ValueError("ontap_job_events: amqp_url must be a URL or a list of URLs")
        exchange = args.get("exchange", DEFAULT_EXCHANGE)
        if not _text(exchange):
            raise ValueError("ontap_job_events: exchange must be an exchange name")
        bindings = args.get("bindings", ["#"])
        if isinstance(bindings, str):
            bindings = [bindings]
        if not isinstance(bindings, list | tuple) or not bindings:
            raise ValueError("ontap_job_events: bindings must be a list of routing keys")
        if not all(_text(b) for b in bindings):
            raise ValueError("ontap_job_events: bindings must be a list of routing keys")
        queue = args.get("queue") or None
        if queue is not None and not _text(queue):
            raise ValueError("ontap_job_events: queue must be a queue name")
        return cls(amqp_url=url, exchange=exchange, bindings=tuple(bindings), queue=queue)


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def rulebook_event(received: Received) -> dict[str, Any] | None:
    """The rulebook event of one AMQP message; None when it is not a CloudEvent with a JSON body."""
    headers = {k: str(v) for k, v in received.headers.items()}
    try:
        cloudevent = from_binary(
            RabbitMQMessage(headers, received.content_type, received.body), _FORMAT
        )
        data = cloudevent.get_data()
        event: dict[str, Any] = {
            "id": cloudevent.get_id(),
            "type": cloudevent.get_type(),
            "source": cloudevent.get_source(),
            "subject": cloudevent.get_subject(),
            "time": _rfc3339(cloudevent.get_time()),
            "cluster": cloudevent.get_extension("cluster"),
            "previous_state": cloudevent.get_extension("previousstate"),
            "routing_key": received.routing_key,
        }
    except (BaseCloudEventException, ValueError, TypeError, KeyError):
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if event["type"] in ERROR_TYPES and isinstance(error, dict):
        event["error"] = error
    else:
        event["job"] = data
    return event


def _rfc3339(moment: datetime | None) -> str | None:
    """As ``ce-time`` reads on the wire: ``2026-01-01T12:00:00.123456Z``."""
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")
