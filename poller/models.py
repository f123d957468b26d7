"""The documented shapes: an ONTAP job, ONTAP's error object, and a watch request.

Nothing here does I/O. ``parse_watch_request`` is the one gate every request passes: it returns a
``WatchRequest`` or raises ``InvalidRequest`` with the reason that goes into ``x-poller-error``.
"""

from __future__ import annotations

import json
import math
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from poller.errors import InvalidRequest

#: Every field of the documented job object; the poller asks ONTAP for all of them.
JOB_FIELDS: Final = ("uuid", "description", "state", "message", "code", "start_time", "end_time")
#: States after which ONTAP never changes a job again.
FINAL_STATES: Final = frozenset({"success", "failure", "cancelled", "expired"})
MAX_REQUEST_BYTES: Final = 64 * 1024
CLUSTER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_JSON_TYPES: Final = frozenset({"application/json", "text/json"})
_IDENTITY_ENCODINGS: Final = frozenset({"", "identity", "utf-8", "utf8"})


@dataclass(frozen=True, slots=True)
class Job:
    """One job object as ONTAP returned it. ``raw`` is published unchanged."""

    raw: dict[str, Any]

    @classmethod
    def from_ontap(cls, data: Any) -> Job:
        """Accept a job record; ONTAP always sends ``uuid`` and, when asked, ``state``."""
        if not isinstance(data, dict):
            raise ValueError("job record is not an object")
        if not isinstance(data.get("uuid"), str) or not isinstance(data.get("state"), str):
            raise ValueError("job record lacks uuid or state")
        return cls(raw=data)

    @property
    def uuid(self) -> str:
        return str(self.raw["uuid"]).lower()

    @property
    def state(self) -> str:
        # Routing keys and event types use the lower-case state; the body keeps ONTAP's spelling.
        return str(self.raw["state"]).lower()

    @property
    def message(self) -> str | None:
        value = self.raw.get("message")
        return value if isinstance(value, str) else None


def error_body(message: str, *, code: str = "0", target: str | None = None) -> dict[str, Any]:
    """Compose an error object in ONTAP's documented shape, for failures ONTAP did not describe."""
    error: dict[str, Any] = {"message": message, "code": code}
    if target is not None:
        error["target"] = target
    return error


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """A valid request to watch one job of one configured cluster until it ends."""

    uuid: str
    cluster: str
    timeout_s: float | None


class _JobRef(BaseModel, title="job object"):
    model_config = ConfigDict(extra="ignore")
    uuid: str | None = None
    links: dict[str, Any] | None = Field(default=None, alias="_links")


class _RequestBody(BaseModel):
    # Unknown fields are ignored so that publishers can add their own (forward compatibility).
    model_config = ConfigDict(extra="ignore", strict=True)
    uuid: str | None = None
    job: _JobRef | None = None
    cluster: str | None = None
    timeout: float | int | None = Field(default=None, gt=0)


def parse_watch_request(
    body: bytes,
    clusters: frozenset[str],
    *,
    content_type: str | None = None,
    content_encoding: str | None = None,
) -> WatchRequest:
    """Validate a raw watch request against the contract; raise ``InvalidRequest`` saying why."""
    if len(body) > MAX_REQUEST_BYTES:
        raise InvalidRequest(
            f"request is {len(body)} bytes; at most {MAX_REQUEST_BYTES} accepted", kind="size"
        )
    if (content_encoding or "").lower() not in _IDENTITY_ENCODINGS:
        raise InvalidRequest(f"unsupported content_encoding {content_encoding!r}", kind="encoding")
    if content_type and not _is_json_type(content_type):
        raise InvalidRequest(
            f"content_type {content_type!r} is not application/json", kind="encoding"
        )
    try:
        # Decoded explicitly: json.loads on bytes would also guess UTF-16 and UTF-32.
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"body is not JSON (UTF-8): {exc}", kind="json") from None
    except RecursionError:
        raise InvalidRequest("body is not JSON: nested too deeply", kind="json") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"body is a JSON {type(data).__name__}, not an object", kind="json")
    try:
        parsed = _RequestBody.model_validate(data)
    except ValidationError as exc:
        message, kind = _first_error(exc)
        raise InvalidRequest(message, kind=kind) from None
    return WatchRequest(
        uuid=_job_uuid(parsed),
        cluster=_cluster(parsed.cluster, clusters),
        timeout_s=_timeout(parsed.timeout),
    )


def _is_json_type(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime in _JSON_TYPES or mime.endswith("+json")


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "body"
    kind = str(err["loc"][0]) if err["loc"] else "shape"
    kind = {"job": "uuid"}.get(kind, kind)
    return f"{where}: {err['msg']}", kind if kind in {"uuid", "cluster", "timeout"} else "shape"


def _job_uuid(parsed: _RequestBody) -> str:
    named: list[str] = []
    if parsed.uuid is not None:
        named.append(parsed.uuid)
    if parsed.job is not None:
        if parsed.job.uuid is not None:
            named.append(parsed.job.uuid)
        href = _self_href(parsed.job.links)
        if href is not None:
            named.append(href.rstrip("/").rsplit("/", 1)[-1])
    if not named:
        raise InvalidRequest("uuid: missing (give 'uuid' or ONTAP's 'job' object)", kind="uuid")
    for candidate in named:
        if not _UUID.fullmatch(candidate):
            raise InvalidRequest(f"uuid: {candidate[:80]!r} is not a UUID", kind="uuid")
    lowered = {candidate.lower() for candidate in named}
    if len(lowered) > 1:
        raise InvalidRequest(
            f"uuid: the request names different UUIDs {sorted(lowered)}", kind="uuid"
        )
    return str(uuidlib.UUID(lowered.pop()))


def _self_href(links: dict[str, Any] | None) -> str | None:
    if not links or "self" not in links:
        return None
    self_link = links["self"]
    href = self_link.get("href") if isinstance(self_link, dict) else None
    if not isinstance(href, str):
        raise InvalidRequest("job._links.self.href: must be a string", kind="uuid")
    return href


def _cluster(name: str | None, clusters: frozenset[str]) -> str:
    if name is None:
        if len(clusters) == 1:
            return next(iter(clusters))
        raise InvalidRequest(
            f"cluster: missing, and {len(clusters)} clusters are configured; name one of "
            f"{sorted(clusters)}",
            kind="cluster",
        )
    if not CLUSTER_NAME.fullmatch(name):
        # A URL or host here would let a publisher point the worker anywhere; only names count.
        raise InvalidRequest(f"cluster: {name[:80]!r} is not a cluster name", kind="cluster")
    if name not in clusters:
        raise InvalidRequest(f"cluster: {name!r} is not configured", kind="cluster")
    return name


def _timeout(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if isinstance(value, bool) or not math.isfinite(seconds):
        raise InvalidRequest("timeout: must be a positive number of seconds", kind="timeout")
    return seconds
