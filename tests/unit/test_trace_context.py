"""Trace context: a watch request's traceparent comes back on its events, and only on them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from poller import tracing
from poller.tracecontext import TraceContext, from_headers
from tests.rig import cluster_rig
from tests.schemas import validate

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE}-b7ad6b7169203331-01"
OTHER = "00-11111111111111111111111111111111-2222222222222222-01"
STEADY = [{"after": 0, "state": "running"}, {"after": 2, "state": "success"}]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": PARENT}, TraceContext(PARENT)),
        (
            {"traceparent": PARENT.encode(), "tracestate": b"congo=t61rcWkgMzE"},
            TraceContext(PARENT, "congo=t61rcWkgMzE"),
        ),
        ({"traceparent": PARENT.upper()}, TraceContext(PARENT)),
        ({}, None),
        ({"traceparent": "not a traceparent"}, None),
        ({"traceparent": f"00-{'0' * 32}-b7ad6b7169203331-01"}, None),
        ({"traceparent": f"00-{TRACE}-{'0' * 16}-01"}, None),
        ({"traceparent": f"ff-{TRACE}-b7ad6b7169203331-01"}, None),
        ({"traceparent": 42}, None),
        ({"tracestate": "a=b"}, None),
    ],
)
def test_traceparent_is_read_from_the_request_or_ignored(
    headers: dict[str, Any], expected: TraceContext | None
) -> None:
    """A valid W3C traceparent is kept; a malformed one is ignored, never an error."""
    assert from_headers(headers) == expected


def trace_of(envelope: Any) -> tuple[str | None, str | None]:
    return envelope.headers.get("ce-traceparent"), envelope.headers.get("ce-tracestate")


async def test_a_watchs_trace_comes_back_on_its_events_and_copies_only() -> None:
    """The job's events carry the first watch's trace; each reply copy its own watch's; others none."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        job = rig.sim.create_job(timeline=STEADY)
        other = rig.sim.create_job(timeline=STEADY)
        first = rig.watch(job, reply_to="first", correlation_id="a")
        first.trace = TraceContext(PARENT, "congo=t61rcWkgMzE")
        joiner = rig.watch(job, reply_to="joiner", correlation_id="b")
        joiner.trace = TraceContext(OTHER)
        plain = rig.watch(other, reply_to="plain", correlation_id="c")
        rig.admit(first)
        await rig.until(lambda: len(rig.outbox.events) == 1)
        rig.admit(joiner)
        rig.admit(plain)
        rig.clock.advance(2)
        await rig.until(lambda: rig.finished(job) and rig.finished(other))

    on_job = [e for e in rig.outbox.events if e.headers["ce-subject"] == job]
    assert {trace_of(e) for e in on_job} == {(PARENT, "congo=t61rcWkgMzE")}
    for envelope in on_job:
        validate("event-headers.json", envelope.headers)
    assert {trace_of(e) for e in rig.outbox.events if e.headers["ce-subject"] == other} == {
        (None, None)
    }
    copies = {(to, trace_of(e)[0]) for to, e in rig.outbox.replies}
    assert ("first", PARENT) in copies and ("joiner", OTHER) in copies and ("plain", None) in copies
    assert {to for to, tp in copies if tp == PARENT} == {"first"}


async def test_a_watch_event_carries_its_watchs_trace() -> None:
    """watch.c1.not_found of a traced request: ce-traceparent as the request sent it."""
    async with cluster_rig() as rig:
        watch = rig.watch("00000000-0000-0000-0000-0000000000aa")
        watch.trace = TraceContext(PARENT)
        rig.admit(watch)
        await rig.until(lambda: rig.finished(watch.request.uuid))
    (event,) = rig.outbox.events
    assert event.routing_key == "watch.c1.not_found"
    assert trace_of(event) == (PARENT, None)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


async def test_with_opentelemetry_each_event_is_a_span_in_the_watchs_trace(
    spans: InMemorySpanExporter,
) -> None:
    """One producer span per event, child of the request's span; the event carries the new span."""
    async with cluster_rig(poll_interval_min=0.05, poll_interval_max=0.1) as rig:
        job = rig.sim.create_job(timeline=STEADY)
        watch = rig.watch(job)
        watch.trace = TraceContext(PARENT)
        rig.admit(watch)
        await rig.until(lambda: len(rig.outbox.events) == 1)
        rig.clock.advance(2)
        await rig.until(lambda: rig.finished(job))

    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["job.c1.running publish", "job.c1.success publish"]
    for span, event in zip(finished, rig.outbox.events, strict=True):
        assert format(span.context.trace_id, "032x") == TRACE
        assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
        assert event.headers["ce-traceparent"] == f"00-{TRACE}-{span.context.span_id:016x}-01"
        assert span.attributes["cloudevents.event_id"] == event.message_id
        assert span.attributes["ontap.job"] == job


def test_spans_are_off_unless_an_exporter_is_configured() -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT nothing is set up, and events carry the trace as it came."""
    assert tracing.configure({}) is False
    with tracing.publishing("job.c1.running", TraceContext(PARENT), {}) as trace:
        assert trace == TraceContext(PARENT)
