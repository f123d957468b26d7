"""Pure: a change of a job, or the end of a watch, as a CloudEvent ready for AMQP.

Events use the CloudEvents 1.0 RabbitMQ binding in binary content mode (``ce-*`` headers, the job
object as the body), produced by the ``cloudevents`` package so that any subscriber using it reads
them back with ``from_binary``. Ids are name-based UUIDs of what the event describes, so the same
change published twice carries the same ``ce-id``. A job ends once, so the id of its end names only
the cluster, the job and the end state: every worker names it alike, whatever history it saw.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from cloudevents.core.bindings.rabbitmq import to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from poller.models import FINAL_STATES
from poller.tracecontext import TraceContext
from poller.tracking import Change, Outcome

APP_ID: Final = "ontap-job-poller"
CONTENT_TYPE: Final = "application/json"
PROGRESS_TYPE: Final = "ontap.job.progress"
_TRACE_HEADERS: Final = frozenset({"ce-traceparent", "ce-tracestate"})
_FORMAT: Final = JSONFormat()


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything the broker adapter needs to publish one event; no AMQP types."""

    routing_key: str
    body: bytes
    headers: dict[str, str]
    message_id: str
    type: str
    timestamp: datetime
    correlation_id: str | None = None

    def with_trace(self, trace: TraceContext | None) -> Envelope:
        """The same event in ``trace`` (``ce-traceparent``, ``ce-tracestate``), or in none."""
        headers = {k: v for k, v in self.headers.items() if k not in _TRACE_HEADERS}
        if trace is not None:
            headers.update({f"ce-{name}": value for name, value in trace.attributes().items()})
        return replace(self, headers=headers)

    def for_watch(self, correlation_id: str | None, trace: TraceContext | None = None) -> Envelope:
        """The copy sent to a watch's ``reply_to``: that watch's ``correlation_id`` and trace."""
        return replace(self.with_trace(trace), correlation_id=correlation_id)


def change_id(cluster: str, job_uuid: str, n: int, state: str) -> str:
    """``ce-id`` of the ``n``-th state change of a job, exactly as the contract defines it.

    A change to an end state happens once per job, so its id leaves ``n`` out: workers that saw
    different histories of the job (one from ``queued``, one from ``paused``) count ``n``
    differently, yet must name the job's end alike.
    """
    if state in FINAL_STATES:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ontap-job-poller:{cluster}/{job_uuid}/{state}"))
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ontap-job-poller:{cluster}/{job_uuid}/{n}/{state}"))


def progress_id(cluster: str, job_uuid: str, n: int, state: str, message: str | None) -> str:
    name = f"ontap-job-poller:{cluster}/{job_uuid}/{n}/{state}/progress/{message or ''}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def watch_id(cluster: str, job_uuid: str, outcome: Outcome, watch_key: str) -> str:
    """Id of a watch's end: per watch, keyed by its correlation_id (else its message_id)."""
    name = f"ontap-job-poller:{cluster}/{job_uuid}/watch/{outcome.value}/{watch_key}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def routing_key(ce_type: str, cluster: str, state: str | None) -> str:
    """The routing key of an event, from its ``ce-type``, cluster and the job's current state.

    ``job.<cluster>.<state>``, ``progress.<cluster>.<state>`` or ``watch.<cluster>.<outcome>``:
    subscribers reading a copy from a ``reply_to`` queue (routed by queue name) rebuild it so.
    """
    if ce_type == PROGRESS_TYPE:
        return f"progress.{cluster}.{state or ''}"
    kind, _, name = ce_type.removeprefix("ontap.").partition(".")
    return f"{kind}.{cluster}.{name}"


def job_event(cluster: str, job_uuid: str, change: Change, seen_at: datetime) -> Envelope:
    """``job.<cluster>.<state>`` or ``progress.<cluster>.<state>`` for one change."""
    if change.kind == "state":
        event_id = change_id(cluster, job_uuid, change.index, change.state)
        ce_type = f"ontap.job.{change.state}"
    else:
        event_id = progress_id(cluster, job_uuid, change.index, change.state, change.job.message)
        ce_type = PROGRESS_TYPE
    return _envelope(
        routing_key=routing_key(ce_type, cluster, change.state),
        event_id=event_id,
        ce_type=ce_type,
        cluster=cluster,
        job_uuid=job_uuid,
        previous_state=change.previous_state,
        data=change.job.raw,
        seen_at=seen_at,
    )


def watch_event(
    cluster: str,
    job_uuid: str,
    outcome: Outcome,
    *,
    body: dict[str, Any],
    previous_state: str | None,
    watch_key: str,
    correlation_id: str | None,
    seen_at: datetime,
) -> Envelope:
    """``watch.<cluster>.<outcome>``: the watch ended without ONTAP reporting an end state."""
    ce_type = f"ontap.watch.{outcome.value}"
    return _envelope(
        routing_key=routing_key(ce_type, cluster, previous_state),
        event_id=watch_id(cluster, job_uuid, outcome, watch_key),
        ce_type=ce_type,
        cluster=cluster,
        job_uuid=job_uuid,
        previous_state=previous_state,
        data=body,
        seen_at=seen_at,
        correlation_id=correlation_id,
    )


def _envelope(
    *,
    routing_key: str,
    event_id: str,
    ce_type: str,
    cluster: str,
    job_uuid: str,
    previous_state: str | None,
    data: dict[str, Any],
    seen_at: datetime,
    correlation_id: str | None = None,
) -> Envelope:
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/clusters/{cluster}",
        "type": ce_type,
        "subject": job_uuid,
        "time": seen_at,
        "datacontenttype": CONTENT_TYPE,
        "cluster": cluster,
    }
    if previous_state is not None:
        attributes["previousstate"] = previous_state
    message = to_binary(CloudEvent(attributes=attributes, data=data), _FORMAT)
    return Envelope(
        routing_key=routing_key,
        body=message.body,
        headers=message.headers,
        message_id=event_id,
        type=ce_type,
        timestamp=seen_at,
        correlation_id=correlation_id,
    )
