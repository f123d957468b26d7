"""The JSON Schemas in ``schemas/``: valid themselves, true to the documented ONTAP shapes, and in
agreement with ``parse_watch_request`` (whatever it accepts, the schema accepts)."""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from poller.errors import InvalidRequest
from poller.events import job_event, watch_event
from poller.models import Job, error_body, parse_watch_request
from poller.tracking import Change, Outcome, Track, expire
from tests.schemas import (
    BASE_URI,
    DOCUMENTED_ERROR,
    DOCUMENTED_JOB,
    errors,
    load_schema,
    schema_names,
    validate,
)

UUID = "1cd8a442-86d1-11e0-ae1c-123478563412"
OTHER_UUID = "2f7e9c1a-0b3d-11ef-9a2b-005056bb1234"
CLUSTERS = frozenset({"cluster1"})
SEEN_AT = datetime(2026, 11, 28, 19, 31, 4, 123456, tzinfo=UTC)

# Verbatim from INTERFACE.md section 3.
REQUEST_FORM: dict[str, Any] = {"uuid": UUID, "cluster": "cluster1", "timeout": 3600}
ONTAP_FORM: dict[str, Any] = {
    "job": {"uuid": UUID, "_links": {"self": {"href": f"/api/cluster/jobs/{UUID}"}}},
    "cluster": "cluster1",
}
SCHEMA_FILES = [
    "error.json",
    "event-headers.json",
    "job-collection.json",
    "job.json",
    "watch-request.json",
]


def is_valid(name: str, instance: Any) -> bool:
    return not errors(name, instance)


# --- the schemas themselves ------------------------------------------------------------------


def test_every_documented_schema_file_exists() -> None:
    """``schemas/`` holds the five contract schemas."""
    assert set(SCHEMA_FILES) <= set(schema_names())


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    """Each schema is itself a valid draft 2020-12 schema."""
    Draft202012Validator.check_schema(load_schema(name))


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_declares_dialect_id_title_and_description(name: str) -> None:
    """Each schema names its dialect, its own ``$id`` under the project base, a title and a text."""
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"{BASE_URI}{name}"
    assert schema["title"]
    assert schema["description"]


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_examples_are_valid(name: str) -> None:
    """Every example a schema carries validates against that schema."""
    for example in load_schema(name).get("examples", []):
        validate(name, example)


# --- job.json, error.json, job-collection.json -----------------------------------------------


def test_documented_example_response_is_a_valid_job() -> None:
    """The example response of the ONTAP documentation validates against ``job.json``."""
    validate("job.json", DOCUMENTED_JOB)


def test_documented_example_error_is_a_valid_error() -> None:
    """The example error of the ONTAP documentation validates against ``error.json``."""
    validate("error.json", DOCUMENTED_ERROR)


@pytest.mark.parametrize(
    "job",
    [
        pytest.param({"uuid": UUID, "state": "queued"}, id="minimal"),
        pytest.param(
            {"uuid": UUID.upper(), "state": "running", "message": "Pending"}, id="running"
        ),
        pytest.param({**DOCUMENTED_JOB, "state": "failure", "code": 460770}, id="failure-code"),
    ],
)
def test_job_without_optional_fields_is_valid(job: dict[str, Any]) -> None:
    """ONTAP leaves out fields without a value; only ``uuid`` and ``state`` are required."""
    validate("job.json", job)


@pytest.mark.parametrize(
    "job",
    [
        pytest.param({**DOCUMENTED_JOB, "svm": {"name": "vs1"}}, id="unknown-field"),
        pytest.param({**DOCUMENTED_JOB, "_links": {"next": {"href": "/x"}}}, id="unknown-link"),
        pytest.param({"state": "running"}, id="no-uuid"),
        pytest.param({"uuid": UUID}, id="no-state"),
        pytest.param({**DOCUMENTED_JOB, "uuid": "not-a-uuid"}, id="bad-uuid"),
        pytest.param({**DOCUMENTED_JOB, "uuid": f"{UUID}\n"}, id="uuid-trailing-newline"),
        pytest.param({**DOCUMENTED_JOB, "code": "0"}, id="code-string"),
        pytest.param({**DOCUMENTED_JOB, "code": 1.5}, id="code-float"),
        pytest.param({**DOCUMENTED_JOB, "message": None}, id="message-null"),
        pytest.param({**DOCUMENTED_JOB, "_links": {"self": "/x"}}, id="self-not-object"),
        pytest.param([DOCUMENTED_JOB], id="array"),
    ],
)
def test_job_outside_the_documented_schema_is_invalid(job: Any) -> None:
    """An unknown field, a missing ``uuid``/``state`` or a wrong type fails ``job.json``."""
    assert not is_valid("job.json", job)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"error": {}}, id="empty-error"),
        pytest.param(
            {"error": {"message": "not authorized for that command", "code": "6"}}, id="401"
        ),
        pytest.param({"error": error_body("HTTP 500")}, id="composed"),
        pytest.param(
            {"error": error_body("entry doesn't exist", code="4", target="uuid")}, id="composed-404"
        ),
    ],
)
def test_error_bodies_the_poller_publishes_are_valid(body: dict[str, Any]) -> None:
    """ONTAP's usual error answers and the ones the poller composes fit ``error.json``."""
    validate("error.json", body)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no-error"),
        pytest.param({"error": "entry doesn't exist"}, id="error-string"),
        pytest.param({"error": {"code": 4}}, id="code-integer"),
        pytest.param({"error": {"arguments": {"code": "1"}}}, id="arguments-object"),
        pytest.param({**DOCUMENTED_ERROR, "status": 404}, id="extra-top-level"),
    ],
)
def test_malformed_error_body_is_invalid(body: dict[str, Any]) -> None:
    """``error`` is required, its fields are strings, and nothing stands beside it."""
    assert not is_valid("error.json", body)


def test_collection_answer_validates_and_refs_resolve() -> None:
    """A collection answer validates, its records checked against ``job.json`` through ``$ref``."""
    answer = {
        "records": [DOCUMENTED_JOB, {"uuid": OTHER_UUID, "state": "running"}],
        "num_records": 2,
        "_links": {"self": {"href": "/api/cluster/jobs?uuid=a|b"}, "next": {"href": "/x"}},
    }
    validate("job-collection.json", answer)
    answer["records"] = [{**DOCUMENTED_JOB, "svm": {}}]
    assert not is_valid("job-collection.json", answer)


def test_collection_requires_records_and_count() -> None:
    """An answer without ``records`` or ``num_records`` is not a collection."""
    assert not is_valid("job-collection.json", {"records": []})
    assert not is_valid("job-collection.json", {"num_records": 0})
    validate("job-collection.json", {"records": [], "num_records": 0})


# --- event-headers.json, against what poller.events produces ----------------------------------


def test_headers_of_job_events_are_valid() -> None:
    """``job_event`` produces ``ce-*`` headers and a body that fit the schemas."""
    job = Job.from_ontap({"uuid": UUID, "state": "running", "message": "Pending"})
    first = job_event("cluster1", job.uuid, Change("state", job, "running", None, 0), SEEN_AT)
    later = job_event(
        "cluster1", job.uuid, Change("progress", job, "running", "running", 0), SEEN_AT
    )
    for envelope in (first, later):
        validate("event-headers.json", envelope.headers)
        validate("job.json", json.loads(envelope.body))
    assert "ce-previousstate" not in first.headers


@pytest.mark.parametrize("outcome", list(Outcome))
def test_headers_and_bodies_of_watch_events_are_valid(outcome: Outcome) -> None:
    """``watch_event`` headers fit, and so does the body ``expire`` gives a watch that ends."""
    track = Track()
    _, body = expire(track)
    envelope = watch_event(
        "cluster1",
        UUID,
        outcome,
        body=body,
        previous_state="running",
        watch_key="corr-1",
        correlation_id="corr-1",
        seen_at=SEEN_AT,
    )
    validate("event-headers.json", envelope.headers)
    validate("error.json", json.loads(envelope.body))


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("ce-specversion", "0.3", id="specversion"),
        pytest.param("ce-id", "not-a-uuid", id="id"),
        pytest.param("ce-source", "https://cluster1.example.com", id="source-url"),
        pytest.param("ce-type", "ontap.watch.lost", id="type-unknown-outcome"),
        pytest.param("ce-type", "com.example.job.success", id="type-foreign"),
        pytest.param("ce-subject", UUID.upper(), id="subject-upper-case"),
        pytest.param("ce-time", "yesterday", id="time"),
        pytest.param("ce-cluster", "Cluster 1", id="cluster"),
        pytest.param("ce-previousstate", "", id="previousstate-empty"),
        pytest.param("ce-dataschema", "https://x", id="undocumented-ce-header"),
    ],
)
def test_bad_event_header_is_invalid(header: str, value: str) -> None:
    """Each ``ce-*`` header is constrained; an undocumented ``ce-*`` header is refused."""
    job = Job.from_ontap({"uuid": UUID, "state": "success"})
    headers = job_event("cluster1", UUID, Change("state", job, "success", "running", 1), SEEN_AT)
    valid = {**headers.headers, "x-other": "allowed"}
    validate("event-headers.json", valid)
    assert not is_valid("event-headers.json", {**valid, header: value})


@pytest.mark.parametrize(
    "header",
    ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-subject", "ce-time", "ce-cluster"],
)
def test_missing_required_event_header_is_invalid(header: str) -> None:
    """Every ``ce-*`` header but ``ce-previousstate`` is required."""
    job = Job.from_ontap({"uuid": UUID, "state": "queued"})
    headers = job_event("cluster1", UUID, Change("state", job, "queued", None, 0), SEEN_AT).headers
    assert not is_valid("event-headers.json", {k: v for k, v in headers.items() if k != header})


# --- watch-request.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_body",
    [
        pytest.param(REQUEST_FORM, id="request-form"),
        pytest.param(ONTAP_FORM, id="ontap-202-form"),
        pytest.param({"uuid": UUID}, id="uuid-only"),
        pytest.param({"job": {"uuid": UUID}}, id="job-uuid-only"),
        pytest.param(
            {"job": {"_links": {"self": {"href": f"/api/cluster/jobs/{UUID}"}}}}, id="href"
        ),
        pytest.param({**REQUEST_FORM, "timeout": 0.5, "x-mine": [1]}, id="extra-fields"),
        pytest.param({**REQUEST_FORM, "timeout": None, "cluster": None}, id="nulls-mean-absent"),
    ],
)
def test_request_forms_are_valid(request_body: dict[str, Any]) -> None:
    """Both forms of INTERFACE section 3 validate, with or without the optional fields."""
    validate("watch-request.json", request_body)


@pytest.mark.parametrize(
    "request_body",
    [
        pytest.param({"cluster": "cluster1"}, id="no-uuid"),
        pytest.param({"uuid": "1cd8a442"}, id="bad-uuid"),
        pytest.param({"uuid": None}, id="uuid-null"),
        pytest.param({"job": {}}, id="empty-job"),
        pytest.param({"job": {"_links": {"self": {"href": "/api/cluster/jobs/x"}}}}, id="bad-href"),
        pytest.param({**REQUEST_FORM, "cluster": "https://x"}, id="cluster-url"),
        pytest.param({**REQUEST_FORM, "cluster": "../etc"}, id="cluster-path"),
        pytest.param({**REQUEST_FORM, "timeout": 0}, id="timeout-zero"),
        pytest.param({**REQUEST_FORM, "timeout": -1}, id="timeout-negative"),
        pytest.param({**REQUEST_FORM, "timeout": True}, id="timeout-bool"),
        pytest.param({**REQUEST_FORM, "timeout": "60"}, id="timeout-string"),
        pytest.param([REQUEST_FORM], id="array"),
    ],
)
def test_malformed_requests_are_invalid(request_body: Any) -> None:
    """Requests without a UUID, with a bad one, a URL as cluster or a bad timeout fail."""
    assert not is_valid("watch-request.json", request_body)


# --- parse_watch_request never accepts what the schema refuses -------------------------------


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """Valid three times in four, so that accepted requests are common enough to check."""
    return st.one_of(valid, valid, valid, invalid)


uuids = mostly(
    st.sampled_from([UUID, UUID.upper(), OTHER_UUID]) | st.uuids().map(str),
    st.sampled_from(
        [UUID.replace("-", ""), f"{{{UUID}}}", f"{UUID}\n", f"urn:uuid:{UUID}", UUID[:-1], ""]
    )
    | st.text(max_size=40)
    | st.integers()
    | st.none(),
)
clusters = mostly(
    st.sampled_from(["cluster1", "cluster2"]) | st.none(),
    st.sampled_from(["Cluster1", "cluster1\n", " cluster1", "", "-x", "a" * 64, "cluster3"])
    | st.sampled_from(
        ["https://x", "http://cluster1.example.com", "../etc", "/etc/passwd", "evil.example:443"]
    )
    | st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
    | st.text(max_size=70)
    | st.integers(),
)
timeouts = mostly(
    st.integers(min_value=1, max_value=10**20)
    | st.floats(min_value=5e-324, max_value=1e308)
    | st.just(10**300)
    | st.none(),
    # Integers beyond float range: see test_models.test_timeout_beyond_float_range_is_invalid.
    st.integers(min_value=-(10**20), max_value=0)
    | st.floats(max_value=0)
    | st.sampled_from([0, 0.0, -0.0, math.nan, math.inf, -math.inf])
    | st.booleans()
    | st.text(max_size=5),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
hrefs = mostly(
    st.sampled_from([UUID, UUID.upper()]).map(lambda u: f"/api/cluster/jobs/{u}"),
    st.sampled_from([f"/api/cluster/jobs/{UUID}/", UUID, "/api/cluster/jobs/", ""])
    | uuids.filter(lambda u: isinstance(u, str)).map(lambda u: f"/api/cluster/jobs/{u}")
    | st.text(max_size=60),
)
# Well-formed _links only: an ill-typed one is test_models.test_ill_typed_self_link_is_invalid.
links = st.one_of(
    st.fixed_dictionaries({"self": st.fixed_dictionaries({"href": hrefs})}),
    st.fixed_dictionaries({}, optional={"next": st.fixed_dictionaries({"href": hrefs})}),
    st.none(),
)
jobs = mostly(
    st.fixed_dictionaries(
        {}, optional={"uuid": st.sampled_from([UUID, UUID.upper()]), "_links": links}
    ),
    st.fixed_dictionaries({}, optional={"uuid": uuids, "_links": links, "state": st.text()})
    | json_values,
)
# One UUID named once or several times, or the fields drawn independently (often clashing).
identities = mostly(
    st.fixed_dictionaries({"uuid": uuids})
    | st.fixed_dictionaries({"job": jobs})
    | st.fixed_dictionaries({"uuid": st.sampled_from([UUID, UUID.upper()]), "job": jobs}),
    st.fixed_dictionaries({}, optional={"uuid": uuids, "job": jobs}),
)
extra_fields = st.dictionaries(
    st.text(max_size=12).filter(lambda k: k not in {"uuid", "job", "cluster", "timeout"}),
    json_values,
    max_size=3,
)
requests = st.builds(
    lambda identity, fields, extra: {**extra, **identity, **fields},
    identities,
    st.fixed_dictionaries({}, optional={"cluster": clusters, "timeout": timeouts}),
    extra_fields,
)
configured = mostly(
    st.sampled_from([frozenset({"cluster1"}), frozenset({"cluster1", "cluster2"})]),
    st.just(frozenset()),
)
fuzz = settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@fuzz
@given(request_body=requests, configured_clusters=configured)
def test_accepted_requests_match_the_schema(
    request_body: dict[str, Any], configured_clusters: frozenset[str]
) -> None:
    """Whatever ``parse_watch_request`` accepts validates against ``watch-request.json``."""
    # JSON has no NaN or Infinity; Python writes them as bare tokens, which the parser must refuse.
    raw = json.dumps(request_body).encode()
    try:
        parsed = parse_watch_request(raw, configured_clusters)
    except InvalidRequest:
        return
    validate("watch-request.json", request_body)
    assert parsed.cluster in configured_clusters
    assert parsed.uuid == parsed.uuid.lower()
    assert parsed.timeout_s is None or (parsed.timeout_s > 0 and math.isfinite(parsed.timeout_s))


valid_requests = st.builds(
    lambda uuid, cluster, timeout, extra, ontap: {
        **extra,
        **({"job": {"uuid": uuid}} if ontap else {"uuid": uuid}),
        "cluster": cluster,
        **({} if timeout is None else {"timeout": timeout}),
    },
    st.uuids().map(str),
    st.sampled_from(["cluster1", "cluster2"]),
    st.none() | st.integers(1, 10**9) | st.floats(min_value=1e-3, max_value=1e9),
    extra_fields,
    st.booleans(),
)


@fuzz
@given(request_body=valid_requests)
def test_schema_valid_requests_are_accepted(request_body: dict[str, Any]) -> None:
    """A schema-valid request naming one UUID and a configured cluster is accepted as is."""
    validate("watch-request.json", request_body)
    parsed = parse_watch_request(
        json.dumps(request_body).encode(), frozenset({"cluster1", "cluster2"})
    )
    uuid = request_body.get("uuid") or request_body["job"]["uuid"]
    assert (parsed.uuid, parsed.cluster) == (uuid.lower(), request_body["cluster"])


@fuzz
@given(body=st.binary(max_size=2048), configured_clusters=configured)
def test_raw_bytes_raise_only_invalid_request(
    body: bytes, configured_clusters: frozenset[str]
) -> None:
    """Arbitrary bytes either parse into a request or raise ``InvalidRequest``, nothing else."""
    try:
        parse_watch_request(body, configured_clusters)
    except InvalidRequest as exc:
        kind = exc.kind
    else:
        return
    assert kind in {"size", "encoding", "json", "shape", "uuid", "cluster", "timeout"}


@fuzz
@given(
    prefix=st.sampled_from([b"", b"{", b'{"uuid": ', b'{"job": {"uuid": "', b"\xef\xbb\xbf"]),
    body=st.binary(max_size=256),
    content_type=st.none() | st.sampled_from(["application/json", "text/xml", ""]) | st.text(),
    content_encoding=st.none() | st.sampled_from(["gzip", "identity", ""]) | st.text(),
)
def test_near_json_bytes_raise_only_invalid_request(
    prefix: bytes, body: bytes, content_type: str | None, content_encoding: str | None
) -> None:
    """Near-JSON bytes under any content properties raise only ``InvalidRequest``."""
    with contextlib.suppress(InvalidRequest):
        parse_watch_request(
            prefix + body, CLUSTERS, content_type=content_type, content_encoding=content_encoding
        )


def test_validate_raises_jsonschema_error() -> None:
    """The helper raises ``jsonschema.ValidationError`` for an invalid instance."""
    with pytest.raises(jsonschema.ValidationError):
        validate("job", {"uuid": UUID})
