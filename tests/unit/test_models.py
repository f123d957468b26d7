"""``parse_watch_request``, the one gate of every watch request, and ``Job.from_ontap``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from poller.errors import InvalidRequest
from poller.models import MAX_REQUEST_BYTES, Job, WatchRequest, error_body, parse_watch_request
from tests.schemas import DOCUMENTED_JOB

UUID = "1cd8a442-86d1-11e0-ae1c-123478563412"
OTHER = "2f7e9c1a-0b3d-11ef-9a2b-005056bb1234"
HREF = f"/api/cluster/jobs/{UUID}"
ONE = frozenset({"cluster1"})
TWO = frozenset({"cluster1", "cluster2"})


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def padded(size: int) -> bytes:
    """A valid request of exactly ``size`` bytes, the rest an ignored extra field."""
    head = body({"uuid": UUID, "pad": ""})
    return body({"uuid": UUID, "pad": "x" * (size - len(head))})


@pytest.mark.parametrize(
    ("raw", "clusters", "expected"),
    [
        pytest.param(
            body({"uuid": UUID}), ONE, WatchRequest(UUID, "cluster1", None), id="uuid-only"
        ),
        pytest.param(
            body({"uuid": UUID.upper(), "cluster": "cluster2"}),
            TWO,
            WatchRequest(UUID, "cluster2", None),
            id="upper-case-uuid-lowered",
        ),
        pytest.param(
            body(
                {"job": {"uuid": UUID, "_links": {"self": {"href": HREF}}}, "cluster": "cluster1"}
            ),
            TWO,
            WatchRequest(UUID, "cluster1", None),
            id="ontap-202-body",
        ),
        pytest.param(
            body({"job": {"_links": {"self": {"href": HREF}}}}),
            ONE,
            WatchRequest(UUID, "cluster1", None),
            id="ontap-202-links-only",
        ),
        pytest.param(
            body({"job": {"_links": {"self": {"href": f"{HREF.upper()}/"}}}}),
            ONE,
            WatchRequest(UUID, "cluster1", None),
            id="href-trailing-slash",
        ),
        pytest.param(
            body({"uuid": UUID, "job": {"uuid": UUID.upper(), "_links": {"self": {"href": HREF}}}}),
            ONE,
            WatchRequest(UUID, "cluster1", None),
            id="same-uuid-named-thrice",
        ),
        pytest.param(
            body({"uuid": UUID, "timeout": 3600}),
            ONE,
            WatchRequest(UUID, "cluster1", 3600.0),
            id="timeout-int",
        ),
        pytest.param(
            body({"uuid": UUID, "timeout": 0.25}),
            ONE,
            WatchRequest(UUID, "cluster1", 0.25),
            id="timeout-float",
        ),
        pytest.param(
            body({"uuid": UUID, "cluster": "cluster1", "owner": "ansible", "x": [1, {"y": None}]}),
            TWO,
            WatchRequest(UUID, "cluster1", None),
            id="extra-fields-ignored",
        ),
        pytest.param(
            body({"uuid": UUID, "cluster": None, "timeout": None}),
            ONE,
            WatchRequest(UUID, "cluster1", None),
            id="nulls-mean-absent",
        ),
        pytest.param(
            body({"uuid": UUID}).decode().encode("utf-8-sig"),
            ONE,
            WatchRequest(UUID, "cluster1", None),
            id="utf-8-bom",
        ),
        pytest.param(
            padded(MAX_REQUEST_BYTES), ONE, WatchRequest(UUID, "cluster1", None), id="64KiB"
        ),
    ],
)
def test_valid_request(raw: bytes, clusters: frozenset[str], expected: WatchRequest) -> None:
    """A valid request of either form becomes a WatchRequest with a lower-case UUID."""
    assert parse_watch_request(raw, clusters) == expected


@pytest.mark.parametrize(
    ("content_type", "content_encoding"),
    [
        pytest.param(None, None, id="none"),
        pytest.param("application/json", None, id="json"),
        pytest.param("application/json; charset=utf-8", "identity", id="json-charset"),
        pytest.param("Application/JSON", "UTF-8", id="letter-case"),
        pytest.param("application/cloudevents+json", "", id="plus-json"),
    ],
)
def test_json_content_properties_are_accepted(
    content_type: str | None, content_encoding: str | None
) -> None:
    """JSON content types and identity encodings are accepted."""
    parsed = parse_watch_request(
        body({"uuid": UUID}), ONE, content_type=content_type, content_encoding=content_encoding
    )
    assert parsed.uuid == UUID


@pytest.mark.parametrize(
    ("raw", "clusters", "options", "kind", "names"),
    [
        pytest.param(b"{uuid: 1}", ONE, {}, "json", "not JSON", id="not-json"),
        pytest.param(b"", ONE, {}, "json", "not JSON", id="empty-body"),
        pytest.param(b"\xff\xfe\xfd", ONE, {}, "json", "not JSON", id="not-utf8"),
        pytest.param(body([{"uuid": UUID}]), ONE, {}, "json", "JSON list", id="json-array"),
        pytest.param(body(UUID), ONE, {}, "json", "JSON str", id="json-string"),
        pytest.param(b"null", ONE, {}, "json", "not an object", id="json-null"),
        pytest.param(body({"cluster": "cluster1"}), ONE, {}, "uuid", "uuid: missing", id="no-uuid"),
        pytest.param(body({"uuid": None}), ONE, {}, "uuid", "uuid: missing", id="uuid-null"),
        pytest.param(body({"job": {}}), ONE, {}, "uuid", "uuid: missing", id="empty-job"),
        pytest.param(body({"uuid": "1cd8a442"}), ONE, {}, "uuid", "not a UUID", id="bad-uuid"),
        pytest.param(
            body({"uuid": UUID.replace("-", "")}), ONE, {}, "uuid", "not a UUID", id="uuid-hex-only"
        ),
        pytest.param(
            body({"uuid": f"{{{UUID}}}"}), ONE, {}, "uuid", "not a UUID", id="uuid-braces"
        ),
        pytest.param(body({"uuid": f"{UUID}\n"}), ONE, {}, "uuid", "not a UUID", id="uuid-newline"),
        pytest.param(body({"uuid": 42}), ONE, {}, "uuid", "uuid", id="uuid-number"),
        pytest.param(body({"job": "x"}), ONE, {}, "uuid", "job", id="job-string"),
        pytest.param(body({"job": {"uuid": 7}}), ONE, {}, "uuid", "job.uuid", id="job-uuid-number"),
        pytest.param(
            body({"job": {"_links": {"self": {"href": "/api/cluster/jobs/x"}}}}),
            ONE,
            {},
            "uuid",
            "not a UUID",
            id="href-not-uuid",
        ),
        pytest.param(
            body({"uuid": UUID, "job": {"uuid": OTHER}}),
            ONE,
            {},
            "uuid",
            "different UUIDs",
            id="uuid-vs-job-uuid",
        ),
        pytest.param(
            body(
                {"uuid": UUID, "job": {"_links": {"self": {"href": f"/api/cluster/jobs/{OTHER}"}}}}
            ),
            ONE,
            {},
            "uuid",
            "different UUIDs",
            id="uuid-vs-href",
        ),
        pytest.param(
            body(
                {"job": {"uuid": UUID, "_links": {"self": {"href": f"/api/cluster/jobs/{OTHER}"}}}}
            ),
            ONE,
            {},
            "uuid",
            "different UUIDs",
            id="job-uuid-vs-href",
        ),
        pytest.param(
            body({"uuid": UUID, "cluster": "cluster3"}),
            TWO,
            {},
            "cluster",
            "'cluster3' is not configured",
            id="unknown-cluster",
        ),
        pytest.param(
            body({"uuid": UUID, "cluster": "https://x"}),
            ONE,
            {},
            "cluster",
            "'https://x' is not a cluster name",
            id="url-in-cluster",
        ),
        pytest.param(
            body({"uuid": UUID, "cluster": "../etc"}),
            ONE,
            {},
            "cluster",
            "'../etc' is not a cluster name",
            id="path-in-cluster",
        ),
        pytest.param(
            body({"uuid": UUID, "cluster": "cluster1.example.com:443"}),
            ONE,
            {},
            "cluster",
            "not a cluster name",
            id="host-in-cluster",
        ),
        pytest.param(
            body({"uuid": UUID, "cluster": "Cluster1"}),
            ONE,
            {},
            "cluster",
            "not a cluster name",
            id="upper-case-cluster",
        ),
        pytest.param(
            body({"uuid": UUID, "cluster": 1}), ONE, {}, "cluster", "cluster", id="cluster-number"
        ),
        pytest.param(
            body({"uuid": UUID}),
            TWO,
            {},
            "cluster",
            "cluster: missing, and 2 clusters are configured",
            id="no-cluster-two-configured",
        ),
        pytest.param(
            body({"uuid": UUID}),
            frozenset(),
            {},
            "cluster",
            "cluster: missing, and 0 clusters",
            id="no-cluster-none-configured",
        ),
        pytest.param(
            body({"uuid": UUID, "timeout": 0}), ONE, {}, "timeout", "timeout", id="timeout-0"
        ),
        pytest.param(
            body({"uuid": UUID, "timeout": -5}),
            ONE,
            {},
            "timeout",
            "timeout",
            id="timeout-negative",
        ),
        pytest.param(
            body({"uuid": UUID, "timeout": True}), ONE, {}, "timeout", "timeout", id="timeout-bool"
        ),
        pytest.param(
            body({"uuid": UUID, "timeout": "60"}),
            ONE,
            {},
            "timeout",
            "timeout",
            id="timeout-string",
        ),
        pytest.param(
            body({"uuid": UUID, "timeout": [60]}), ONE, {}, "timeout", "timeout", id="timeout-list"
        ),
        # Python's json reads these non-JSON tokens; they must not become a deadline.
        pytest.param(
            f'{{"uuid": "{UUID}", "timeout": NaN}}'.encode(),
            ONE,
            {},
            "timeout",
            "timeout",
            id="timeout-nan",
        ),
        pytest.param(
            f'{{"uuid": "{UUID}", "timeout": Infinity}}'.encode(),
            ONE,
            {},
            "timeout",
            "timeout",
            id="timeout-infinity",
        ),
        pytest.param(
            f'{{"uuid": "{UUID}", "timeout": 1e400}}'.encode(),
            ONE,
            {},
            "timeout",
            "timeout",
            id="timeout-overflows-to-infinity",
        ),
        pytest.param(
            padded(MAX_REQUEST_BYTES + 1),
            ONE,
            {},
            "size",
            f"{MAX_REQUEST_BYTES + 1} bytes",
            id="over-64KiB",
        ),
        pytest.param(
            body({"uuid": UUID}),
            ONE,
            {"content_encoding": "gzip"},
            "encoding",
            "content_encoding 'gzip'",
            id="gzip",
        ),
        pytest.param(
            body({"uuid": UUID}),
            ONE,
            {"content_type": "text/xml"},
            "encoding",
            "content_type 'text/xml'",
            id="text-xml",
        ),
    ],
)
def test_invalid_request(
    raw: bytes, clusters: frozenset[str], options: dict[str, str], kind: str, names: str
) -> None:
    """An invalid request raises InvalidRequest whose kind and message name the problem."""
    with pytest.raises(InvalidRequest) as caught:
        parse_watch_request(raw, clusters, **options)
    assert caught.value.kind == kind
    assert names in str(caught.value)
    assert "\n" not in str(caught.value)  # it travels in the x-poller-error header


def test_rejection_message_is_bounded_for_a_huge_bad_uuid() -> None:
    """A long bad value is cut short in the reason, which travels in an AMQP header."""
    with pytest.raises(InvalidRequest) as caught:
        parse_watch_request(body({"uuid": "x" * 60000}), ONE)
    assert len(str(caught.value)) < 200


def test_timeout_beyond_float_range_is_invalid() -> None:
    """An integer timeout too large for a float is refused as InvalidRequest, not OverflowError."""
    with pytest.raises(InvalidRequest) as caught:
        parse_watch_request(f'{{"uuid": "{UUID}", "timeout": 1{"0" * 400}}}'.encode(), ONE)
    assert caught.value.kind == "timeout"


def test_deeply_nested_json_is_invalid() -> None:
    """A body nested deeper than the JSON decoder's recursion limit is refused as InvalidRequest."""
    with pytest.raises(InvalidRequest) as caught:
        parse_watch_request(b"[" * 60000, ONE)
    assert caught.value.kind == "json"


@pytest.mark.parametrize(
    "links",
    [
        pytest.param({"self": {"href": 5}}, id="href-number"),
        pytest.param({"self": "/api/cluster/jobs/x"}, id="self-string"),
        pytest.param({"self": {}}, id="self-without-href"),
    ],
)
def test_ill_typed_self_link_is_invalid(links: dict[str, Any]) -> None:
    """ONTAP's job._links.self.href is a string; any other shape is refused, as the schema does."""
    with pytest.raises(InvalidRequest):
        parse_watch_request(body({"job": {"uuid": UUID, "_links": links}}), ONE)


# --- Job.from_ontap ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(DOCUMENTED_JOB, id="documented-example"),
        pytest.param({"uuid": UUID, "state": "running"}, id="minimal"),
        pytest.param({"uuid": UUID.upper(), "state": "SUCCESS", "code": 0}, id="upper-case"),
    ],
)
def test_job_from_ontap_accepts_a_record(record: dict[str, Any]) -> None:
    """A record with string uuid and state becomes a Job that keeps the record unchanged."""
    job = Job.from_ontap(record)
    assert job.raw is record
    assert job.uuid == record["uuid"].lower()
    assert job.state == record["state"].lower()


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(None, id="null"),
        pytest.param([DOCUMENTED_JOB], id="array"),
        pytest.param("running", id="string"),
        pytest.param({"state": "running"}, id="no-uuid"),
        pytest.param({"uuid": UUID}, id="no-state"),
        pytest.param({"uuid": 1, "state": "running"}, id="uuid-number"),
        pytest.param({"uuid": UUID, "state": None}, id="state-null"),
    ],
)
def test_job_from_ontap_rejects_a_non_record(record: Any) -> None:
    """Anything but an object with string uuid and state raises ValueError."""
    with pytest.raises(ValueError, match="job record"):
        Job.from_ontap(record)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        pytest.param(
            {"uuid": UUID, "state": "running", "message": "Pending"}, "Pending", id="text"
        ),
        pytest.param({"uuid": UUID, "state": "running"}, None, id="absent"),
        pytest.param({"uuid": UUID, "state": "running", "message": 3}, None, id="not-text"),
    ],
)
def test_job_message_is_text_or_none(record: dict[str, Any], message: str | None) -> None:
    """Job.message is ONTAP's message when it is text, else None."""
    assert Job.from_ontap(record).message == message


def test_error_body_has_the_documented_shape() -> None:
    """error_body composes ONTAP's error object, with target only when given."""
    assert error_body("HTTP 500") == {"message": "HTTP 500", "code": "0"}
    assert error_body("entry doesn't exist", code="4", target="uuid") == {
        "message": "entry doesn't exist",
        "code": "4",
        "target": "uuid",
    }
