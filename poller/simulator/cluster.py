"""How the simulated cluster differs from the machine it runs on: its clock, zone and limits.

A real cluster's clock is not the worker's: it may run ahead or behind, and it renders times in
its own zone. The simulator keeps every timeline on its own clock and applies the cluster's
offset and zone only where ONTAP shows time: job times, the `Date` header and time queries.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import formatdate
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Far enough for any clock skew a test wants, near enough that every time stays renderable.
MAX_CLOCK_OFFSET_S = 10 * 366 * 86400.0

_FIXED_OFFSET = re.compile(r"([+-])(\d{2}):?(\d{2})")


@functools.lru_cache(maxsize=64)
def parse_zone(name: str) -> tzinfo:
    """The zone called `name`: `UTC`, `Z`, a fixed offset such as `-05:00`, or an IANA name."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    fixed = _FIXED_OFFSET.fullmatch(name)
    if fixed is not None:
        sign, hours, minutes = fixed.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta >= timedelta(hours=24) or int(minutes) >= 60:
            raise ValueError(f"time zone offset out of range: {name!r}")
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown time zone {name!r}") from error


def render_instant(epoch: float, zone: tzinfo) -> str:
    """ONTAP's time format: ISO-8601 in the cluster's zone, whole seconds, with the offset."""
    return datetime.fromtimestamp(math.floor(epoch), zone).isoformat()


def parse_instant(text: str, zone: tzinfo) -> float:
    """The instant an ISO-8601 time names; a time without an offset is in the cluster's zone.

    Raises ValueError when `text` is not such a time.
    """
    if "T" in text:
        # An unencoded `+` of an offset arrives as a space once the query string is decoded.
        text = text.replace(" ", "+")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


def http_date(epoch: float) -> str:
    """An HTTP `Date` header value (RFC 7231), e.g. `Mon, 30 Nov 2026 07:21:44 GMT`."""
    return formatdate(epoch, usegmt=True)


class ClusterConfig(BaseModel):
    """The simulated cluster's settings that a test may change while it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clock_offset_s: float = Field(
        default=0.0, ge=-MAX_CLOCK_OFFSET_S, le=MAX_CLOCK_OFFSET_S, allow_inf_nan=False
    )
    timezone: str = "UTC"
    refuse_filters: bool = False
    max_page: int | None = Field(default=None, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        parse_zone(name)
        return name

    @property
    def zone(self) -> tzinfo:
        """The zone in which the cluster renders and reads times."""
        return parse_zone(self.timezone)
