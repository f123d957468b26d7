"""Validate instances against the published JSON Schemas in ``schemas/``.

Every schema file is loaded into one ``referencing.Registry`` under its ``$id``, so a ``$ref`` from
one file to another (``job-collection.json`` -> ``job.json``) resolves without any network access::

    from tests.schemas import validate

    validate("job.json", json.loads(message.body))  # raises jsonschema.ValidationError
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_DIR: Final = Path(__file__).resolve().parent.parent / "schemas"
BASE_URI: Final = "https://ontap-job-poller.example/schemas/"

# Verbatim from ontap-cluster-jobs-api.txt.
DOCUMENTED_JOB: Final[dict[str, Any]] = {
    "_links": {"self": {"href": "/api/resourcelink"}},
    "code": 0,
    "description": "App Snapshot Job",
    "end_time": "string",
    "message": "Complete: Successful",
    "start_time": "string",
    "state": "string",
    "uuid": "1cd8a442-86d1-11e0-ae1c-123478563412",
}
DOCUMENTED_ERROR: Final[dict[str, Any]] = {
    "error": {
        "arguments": [{"code": "string", "message": "string"}],
        "code": "4",
        "message": "entry doesn't exist",
        "target": "uuid",
    }
}


def _file_name(name: str) -> str:
    return name if name.endswith(".json") else f"{name}.json"


def schema_names() -> list[str]:
    """File names of every schema in ``schemas/``, sorted."""
    return sorted(path.name for path in SCHEMA_DIR.glob("*.json"))


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema in ``schemas/<name>`` (``.json`` may be left out), parsed."""
    with (SCHEMA_DIR / _file_name(name)).open(encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


@functools.cache
def registry() -> Registry[Any]:
    """Every schema under its ``$id``: what ``$ref`` between the files resolves against."""
    resources = [
        (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012))
        for schema in map(load_schema, schema_names())
        if "$id" in schema
    ]
    return Registry().with_resources(resources).crawl()


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """A validator for ``schemas/<name>`` that resolves ``$ref``s and checks formats."""
    return Draft202012Validator(
        load_schema(_file_name(name)),
        registry=registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def validate(name: str, instance: Any) -> None:
    """Raise ``jsonschema.ValidationError`` (the most relevant one) unless ``instance`` is valid."""
    validator(_file_name(name)).validate(instance)


def errors(name: str, instance: Any) -> list[str]:
    """Every reason ``instance`` is not valid against ``schemas/<name>``; empty when it is."""
    found = validator(_file_name(name)).iter_errors(instance)
    return sorted(f"{error.json_path}: {error.message}" for error in found)
