"""ONTAP's query grammar on the jobs collection: `field=a|b`, alternatives ORed, fields ANDed.

A query is parsed once per request into one predicate per field, over plain values: strings,
codes, and times as whole epoch seconds on the cluster's clock. Filtering 20,000 jobs then costs
a value lookup and a comparison per job and field, never a rendered job object.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Literal

from poller.simulator.cluster import parse_instant, render_instant
from poller.simulator.shapes import invalid_value, requested_fields, unexpected_argument

FieldType = Literal["str", "int", "time"]
Value = str | int | None
Predicate = Callable[[Value], bool]

FILTER_FIELDS: dict[str, FieldType] = {
    "code": "int",
    "description": "str",
    "end_time": "time",
    "message": "str",
    "start_time": "time",
    "state": "str",
    "uuid": "str",
}
# Parameters ONTAP accepts on a collection besides filters; the last three are accepted and
# ignored (records always come in creation order, at once).
COLLECTION_PARAMS = frozenset(
    {"fields", "max_records", "offset", "return_records", "return_timeout", "order_by"}
)
DEFAULT_MAX_RECORDS = 10_000

# Longest first, so that `<=` is not read as `<` followed by `=`.
_COMPARISONS: tuple[tuple[str, Callable[[Any, Any], bool]], ...] = (
    ("<=", operator.le),
    (">=", operator.ge),
    ("<", operator.lt),
    (">", operator.gt),
)


@dataclass(frozen=True)
class Condition:
    """One `field=...` of the query: the job passes when `matches` holds for its value."""

    field: str
    matches: Predicate


@dataclass(frozen=True)
class CollectionQuery:
    """A collection request, read and checked once."""

    fields: frozenset[str] | None
    max_records: int
    offset: int
    uuids: list[str] | None  # `uuid=a|b|c`: the jobs to look up, in the order asked
    conditions: tuple[Condition, ...]


def filter_key(names: Iterable[str]) -> str:
    """The fields a query filters on, as counted in stats: e.g. "end_time,state", or ""."""
    return ",".join(sorted(set(names).intersection(FILTER_FIELDS)))


def parse_collection(
    items: Sequence[tuple[str, str]], zone: tzinfo, *, refuse_filters: bool = False
) -> CollectionQuery:
    """Read a collection query string's items; raise an OntapError (400) as ONTAP would."""
    filters: list[tuple[str, str]] = []
    for name, value in items:
        if name in FILTER_FIELDS:
            if refuse_filters and name != "uuid":
                # What a release (or proxy) that does not know the query operators answers.
                raise unexpected_argument(name)
            filters.append((name, value))
        elif name not in COLLECTION_PARAMS:
            raise unexpected_argument(name)
    params = dict(items)  # the last of a repeated paging parameter wins
    # Without `fields`, ONTAP lists records by uuid and link only.
    fields = requested_fields([v for n, v in items if n == "fields"], default=frozenset())
    max_records = _int_param(params, "max_records", DEFAULT_MAX_RECORDS, minimum=1)
    offset = _int_param(params, "offset", 0, minimum=0)
    uuids = _uuid_batch(filters)
    if uuids is not None:
        filters = [(name, value) for name, value in filters if name != "uuid"]
    conditions = tuple(Condition(name, _predicate(name, value, zone)) for name, value in filters)
    return CollectionQuery(fields, max_records, offset, uuids, conditions)


def _int_param(params: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise invalid_value(name, raw)
    return value


def _uuid_batch(filters: list[tuple[str, str]]) -> list[str] | None:
    """The UUIDs of a lone `uuid=a|b|c` of plain values, lower case, each once; else None.

    Such a batch is answered by looking each UUID up, in the order asked, rather than by
    scanning every job: the worker reads its watched jobs this way.
    """
    values = [value for name, value in filters if name == "uuid"]
    if len(values) != 1:
        return None
    names = [name.strip().lower() for name in values[0].split("|")]
    if not all(_is_plain(name) for name in names):
        return None
    return list(dict.fromkeys(name for name in names if name))


def _is_plain(text: str) -> bool:
    return not (text.startswith(("!", "<", ">")) or "*" in text or text.lower() == "null")


def _predicate(field: str, value: str, zone: tzinfo) -> Predicate:
    """The test of one `field=alt1|alt2|...`: true when any alternative holds."""
    kind = FILTER_FIELDS[field]
    alternatives = [text.strip() for text in value.split("|") if text.strip()]
    tests = [_alternative(field, kind, text, zone) for text in alternatives if not _is_plain(text)]
    plain = {_operand(field, kind, text, zone) for text in alternatives if _is_plain(text)}
    if plain:
        # Plain values become one set lookup: `state=queued|running|paused` is on every poll.
        fold = _fold(kind)
        tests.append(lambda v: v is not None and fold(v) in plain)
    if len(tests) == 1:
        return tests[0]
    return lambda v: any(test(v) for test in tests)  # none at all (`state=`): matches nothing


def _alternative(field: str, kind: FieldType, text: str, zone: tzinfo) -> Predicate:
    """The test of one alternative: `<v`, `>v`, `<=v`, `>=v`, `[!]null`, `[!]glob` or `!v`."""
    fold = _fold(kind)
    for symbol, compare in _COMPARISONS:
        if text.startswith(symbol):
            bound = _operand(field, kind, text[len(symbol) :], zone)
            return lambda v: v is not None and compare(fold(v), bound)
    negated = text.startswith("!")
    body = text[1:] if negated else text
    positive: Predicate
    if body.lower() == "null":
        positive = _is_missing
    elif "*" in body:
        positive = _glob(kind, body, zone)
    else:
        wanted = _operand(field, kind, body, zone)
        positive = lambda v: v is not None and fold(v) == wanted  # noqa: E731
    # A value that differs, including no value at all, passes a `!` alternative.
    return (lambda v: not positive(v)) if negated else positive


def _fold(kind: FieldType) -> Callable[[Value], Any]:
    """How a job's value is compared: strings without regard to case, numbers as they are."""
    if kind == "str":
        return lambda v: str(v).casefold()
    return lambda v: v


def _is_missing(value: Value) -> bool:
    return value is None


def _glob(kind: FieldType, pattern: str, zone: tzinfo) -> Predicate:
    """`*` for any run of characters, case-insensitive, against the value as ONTAP shows it."""
    parts = (re.escape(part) for part in pattern.split("*"))
    fullmatch = re.compile(".*".join(parts), re.IGNORECASE | re.DOTALL).fullmatch
    if kind == "time":
        return lambda v: v is not None and fullmatch(render_instant(int(v), zone)) is not None
    return lambda v: v is not None and fullmatch(str(v)) is not None


def _operand(field: str, kind: FieldType, text: str, zone: tzinfo) -> object:
    """The query value in the field's type: an instant, an integer, or a case-folded string."""
    try:
        if kind == "time":
            return parse_instant(text, zone)
        if kind == "int":
            return int(text)
    except ValueError as error:
        raise invalid_value(field, text) from error
    return text.casefold()
