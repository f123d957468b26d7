"""schemas/asyncapi.yaml: a valid AsyncAPI 3.0 document that says what the code does."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from poller.config import Settings
from poller.events import job_event, watch_event
from poller.models import Job
from poller.tracking import Change, Outcome
from tests.contract import end_id
from tests.schemas import SCHEMA_DIR, errors, load_schema, validate

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = SCHEMA_DIR / "asyncapi.yaml"
#: The AsyncAPI 3.0.0 JSON Schema, vendored from @asyncapi/specs (see tests/data/README.md).
META_SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.json"
#: JSON Schema keywords that draft-07 does not know or reads differently.
NOT_DRAFT_07 = {
    "prefixItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "dependentSchemas",
    "dependentRequired",
    "$dynamicRef",
    "$dynamicAnchor",
    "$anchor",
    "minContains",
    "maxContains",
    "$vocabulary",
}
ANNOTATIONS = {"description", "title", "examples", "$comment"}
NOW = datetime(2026, 11, 28, 19, 31, 7, tzinfo=UTC)
JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"


@cache
def document() -> dict[str, Any]:
    data = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def asyncapi_validator() -> Draft7Validator:
    schema = json.loads(META_SCHEMA.read_text(encoding="utf-8"))
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def refs(node: Any, path: str = "#") -> Iterator[tuple[str, str]]:
    """Every ``$ref`` in ``node`` with where it was found."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield path, value
            else:
                yield from refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from refs(value, f"{path}/{index}")


def pointer(root: Any, fragment: str) -> Any:
    """Follow a JSON pointer (``/a/b``) into ``root``; KeyError when it leads nowhere."""
    node = root
    for raw in filter(None, fragment.split("/")):
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def resolve(target: str) -> Any:
    file_part, _, fragment = target.partition("#")
    root = document() if not file_part else load_schema(Path(file_part).name)
    return pointer(root, fragment)


def channel_pattern(address: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z_]+\})", address)
    body = "".join("[^.]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(body)


def test_the_document_is_valid_asyncapi_3() -> None:
    """schemas/asyncapi.yaml validates against the AsyncAPI 3.0.0 JSON Schema."""
    assert document()["asyncapi"] == "3.0.0"
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in asyncapi_validator().iter_errors(document())
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("operations", "publishJobChanges", "action"), "publish"),
        (("channels", "watchRequests", "bindings", "amqp", "is"), "exchange"),
        (("info",), {"title": "no version"}),
    ],
)
def test_the_meta_schema_catches_a_broken_document(where: tuple[str, ...], value: Any) -> None:
    """The vendored schema is not vacuous: a v2 action, a bad binding, no version, are refused."""
    broken = copy.deepcopy(document())
    node = broken
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    assert list(asyncapi_validator().iter_errors(broken))


def test_every_reference_resolves() -> None:
    """Local pointers and the JSON Schema files (with their fragments) all exist."""
    found = list(refs(document()))
    assert found
    broken = []
    for where, target in found:
        try:
            resolve(target)
        except (KeyError, IndexError, FileNotFoundError, ValueError):
            broken.append(f"{where}: {target}")
    assert broken == []
    files = {Path(t.partition("#")[0]).name for _, t in found if not t.startswith("#")}
    assert files == {"watch-request.json", "job.json", "error.json", "event-headers.json"}


def test_names_are_the_configuration_defaults() -> None:
    """Queue, dead-letter queue and exchange are named as Settings names them by default."""
    fields = Settings.model_fields
    channels = document()["channels"]
    assert channels["watchRequests"]["address"] == fields["watch_queue"].default
    assert channels["rejectedRequests"]["address"] == fields["dead_letter_queue"].default
    exchange = document()["components"]["channelBindings"]["eventsExchange"]["amqp"]["exchange"]
    assert exchange["name"] == fields["events_exchange"].default
    assert exchange["type"] == "topic"
    assert exchange["durable"] is True


def real_events() -> list[tuple[str, str]]:
    """(routing key, ce-type) of events as the code builds them."""
    job = Job({"uuid": JOB, "state": "running", "message": "Copying"})
    built = [
        job_event("c1", JOB, Change("state", job, "running", "queued", 1), NOW),
        job_event("c1", JOB, Change("state", job, "vserver_stopped", "running", 2), NOW),
        job_event("c1", JOB, Change("progress", job, "running", "running", 1), NOW),
    ]
    built += [
        watch_event(
            "c1",
            JOB,
            outcome,
            body={"error": {"message": "x"}},
            previous_state=None,
            watch_key="k",
            correlation_id=None,
            seen_at=NOW,
        )
        for outcome in Outcome
    ]
    return [(e.routing_key, e.type) for e in built]


@pytest.mark.parametrize(("routing_key", "ce_type"), real_events())
def test_every_routing_key_the_code_publishes_has_a_channel(routing_key: str, ce_type: str) -> None:
    """Each event the code builds matches one event channel, whose messages name its ce-type."""
    channels = document()["channels"]
    matching = [
        name
        for name, channel in channels.items()
        if channel.get("address") and "{" in channel["address"]
        if channel_pattern(channel["address"]).fullmatch(routing_key)
    ]
    assert len(matching) == 1, matching
    message_types = [
        resolve(ref["$ref"])["bindings"]["amqp"]["messageType"]
        for ref in channels[matching[0]]["messages"].values()
    ]
    templates = [re.escape(t).replace(re.escape("<state>"), "[a-z_]+") for t in message_types]
    assert any(re.fullmatch(template, ce_type) for template in templates), message_types


def test_watch_outcomes_are_exactly_the_codes_outcomes() -> None:
    """The outcome parameter lists every Outcome of the code, and nothing else."""
    outcome = document()["channels"]["watchOutcomes"]["parameters"]["outcome"]
    assert set(outcome["enum"]) == {o.value for o in Outcome}


def message_examples() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, message in document()["components"]["messages"].items():
        for example in message.get("examples", []):
            yield name, example


def payload_files(message: dict[str, Any]) -> list[str]:
    schema = message["payload"]["schema"]
    options = schema.get("anyOf", [schema])
    return [Path(option["$ref"]).name for option in options]


@pytest.mark.parametrize(("name", "example"), list(message_examples()))
def test_examples_are_valid_messages(name: str, example: dict[str, Any]) -> None:
    """Every example payload (and header set) is valid against the schemas it points to."""
    message = document()["components"]["messages"][name]
    files = payload_files(message)
    failures = {file: errors(file, example["payload"]) for file in files}
    assert any(not found for found in failures.values()), failures
    if "headers" in example:
        validate("event-headers.json", example["headers"])


def test_the_job_changed_example_carries_the_contracts_id() -> None:
    """The example's ce-id is the contract's id of that job's end, which has no n."""
    example = document()["components"]["messages"]["jobChanged"]["examples"][0]
    headers = example["headers"]
    assert headers["ce-id"] == end_id(headers["ce-cluster"], headers["ce-subject"], "success")
    assert headers["ce-type"] == f"ontap.job.{example['payload']['state']}"


@pytest.mark.parametrize(
    "file", ["watch-request.json", "job.json", "error.json", "event-headers.json"]
)
def test_referenced_schemas_read_the_same_in_draft_07(file: str) -> None:
    """The document declares draft-07 for its payloads: no keyword of the files reads otherwise."""
    problems = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "$ref" in node and set(node) - {"$ref"} - ANNOTATIONS:
                problems.append(f"{path}: $ref with siblings, which draft-07 ignores")
            for key, value in node.items():
                if key in NOT_DRAFT_07:
                    problems.append(f"{path}/{key}")
                if key not in {"properties", "$defs", "examples", "enum", "const"}:
                    walk(value, f"{path}/{key}")
                elif key in {"properties", "$defs"}:
                    for name, sub in value.items():
                        walk(sub, f"{path}/{key}/{name}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}/{index}")

    walk(load_schema(file), file)
    assert problems == []
    Draft7Validator.check_schema(load_schema(file))
