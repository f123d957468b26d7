"""OpenTelemetry spans, optional: one span per event published, in the trace of its watch.

Off unless OpenTelemetry is installed (the ``[otel]`` extra) and configured the standard way, with
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). When on, each event is
published inside a span whose parent is the watch's ``traceparent``, and the event carries that
span's context; when off, the event carries the watch's ``traceparent`` as it came.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import structlog

from poller.tracecontext import TraceContext, from_headers

log = structlog.get_logger(__name__)
_TRACER: Any = None


def configure(environ: Mapping[str, str] | None = None) -> bool:
    """Turn spans on when the environment asks for an OTLP exporter; True when on."""
    env = os.environ if environ is None else environ
    if not (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing.unavailable", hint="pip install 'ontap-job-poller[otel]'")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": "ontap-job-poller"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)
    return True


def use(provider: Any) -> None:
    """Publish spans through ``provider`` (an SDK ``TracerProvider``; tests hand in their own)."""
    global _TRACER  # noqa: PLW0603 - one tracer for the process, as OpenTelemetry's own API has
    _TRACER = provider.get_tracer("poller") if provider is not None else None


@contextlib.contextmanager
def publishing(
    routing_key: str, parent: TraceContext | None, attributes: Mapping[str, str]
) -> Iterator[TraceContext | None]:
    """A span around publishing one event; yields the trace context the event should carry."""
    if _TRACER is None or parent is None:
        yield parent
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    carrier = parent.attributes()
    context = propagator.extract(carrier)
    with _TRACER.start_as_current_span(
        f"{routing_key} publish",
        context=context,
        kind=SpanKind.PRODUCER,
        attributes=dict(attributes),
    ):
        injected: dict[str, str] = {}
        propagator.inject(injected)
        yield from_headers(injected) or parent
