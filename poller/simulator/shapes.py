"""ONTAP's documented shapes that every part of the simulator speaks: error bodies and fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

JOBS_PATH = "/api/cluster/jobs"

DOCUMENTED_FIELDS = frozenset(
    {"_links", "code", "description", "end_time", "message", "start_time", "state", "uuid"}
)

# ONTAP's codes for "Unexpected argument" and for a value it cannot read.
UNEXPECTED_ARGUMENT = "262179"
INVALID_VALUE = "262185"


class OntapError(Exception):
    """An ONTAP error answer: status and the documented `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, code: str, target: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if target is not None:
            self.body["target"] = target


def not_found() -> OntapError:
    """The documented answer for an unknown or purged job."""
    # A fresh instance each time: a shared one would pile up tracebacks as it is re-raised.
    return OntapError(404, "entry doesn't exist", "4", target="uuid")


def not_authorized(status: int = 401) -> OntapError:
    """ONTAP's answer to refused credentials."""
    return OntapError(status, "not authorized for that command", "6")


def unexpected_argument(name: str) -> OntapError:
    """ONTAP's answer to a query parameter or field it does not know."""
    return OntapError(400, f'Unexpected argument "{name}".', UNEXPECTED_ARGUMENT, target=name)


def invalid_value(name: str, raw: str) -> OntapError:
    """ONTAP's answer to a query value it cannot read."""
    return OntapError(400, f'Invalid value "{raw}" for "{name}".', INVALID_VALUE, target=name)


def requested_fields(
    values: Sequence[str], default: frozenset[str] | None
) -> frozenset[str] | None:
    """The fields named by `fields` query values (comma-separated); None means all of them."""
    names = {name.strip() for value in values for name in value.split(",") if name.strip()}
    if not names:
        return default
    if "*" in names:
        return None
    unknown = sorted(names - DOCUMENTED_FIELDS)
    if unknown:
        # Strict on purpose: a misspelt field would otherwise silently go missing.
        raise unexpected_argument(unknown[0])
    return frozenset(names)


def select_fields(
    record: dict[str, Any], wanted: frozenset[str] | None, always: set[str]
) -> dict[str, Any]:
    """The record cut down to the wanted fields (None: all) and those always shown."""
    if wanted is None:
        return record
    keep = wanted | always
    return {name: value for name, value in record.items() if name in keep}
