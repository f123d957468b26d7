"""Pure: W3C Trace Context as it rides on watch requests and comes back on their events.

A watch request's AMQP headers ``traceparent`` and ``tracestate`` come back on the events of that
watch as ``ce-traceparent`` and ``ce-tracestate`` (the CloudEvents distributed-tracing extension),
so that a trace started by whoever asked for the watch goes on through the job's events.
A malformed ``traceparent`` is ignored, as the W3C recommendation says: it never hurts a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

#: version-traceid-parentid-flags; an all-zero trace id or parent id is invalid.
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_MAX_TRACESTATE: Final = 512


@dataclass(frozen=True, slots=True)
class TraceContext:
    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent.split("-")[1]

    def attributes(self) -> dict[str, str]:
        """As CloudEvents extension attributes (``ce-traceparent``, ``ce-tracestate`` on AMQP)."""
        found = {"traceparent": self.traceparent}
        if self.tracestate:
            found["tracestate"] = self.tracestate
        return found


def from_headers(headers: Mapping[str, Any]) -> TraceContext | None:
    """The trace context of a request's AMQP headers; None when absent or malformed."""
    parent = _text(headers.get("traceparent"))
    if parent is None:
        return None
    parent = parent.strip().lower()
    match = _TRACEPARENT.fullmatch(parent)
    if match is None or match[1] == "ff" or set(match[2]) == {"0"} or set(match[3]) == {"0"}:
        return None
    state = _text(headers.get("tracestate"))
    if state is not None:
        state = state.strip()[:_MAX_TRACESTATE] or None
    return TraceContext(parent, state)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None
