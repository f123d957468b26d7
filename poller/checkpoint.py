"""Pure: a watch's progress as it travels in the ``x-poller-checkpoint`` header.

A live watch is re-enqueued with this header after every published change of state and at least
every ``checkpoint_interval``. Whoever consumes the copy, this worker after a restart or another
one, resumes exactly there: same deadline, same ``n``, so the same change gets the same ``ce-id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from poller.errors import InvalidRequest
from poller.tracking import Progress

HEADER: Final = "x-poller-checkpoint"
VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    watch_id: str
    deadline_at: float
    progress: Progress = field(default_factory=Progress)


def _absent_unless(kind: type) -> BeforeValidator:
    # An optional part of the wrong type reads as absent: the progress stays usable, and at
    # worst a change is published again under the id it already had. (No mutation testing here:
    # this runs once, when the module is imported, before any mutant can be switched on.)
    return BeforeValidator(lambda v: v if isinstance(v, kind) else None)  # pragma: no mutate


class _Header(BaseModel):
    """The header's JSON object, version 1. Every key must be present; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1]
    watch_id: Annotated[str, BeforeValidator(str)]
    deadline_at: float
    state: Annotated[str | None, _absent_unless(str)]
    #: ``n`` of the contract: changes of state published so far.
    changes: Annotated[int, Field(strict=True, ge=0)]
    message: Annotated[str | None, _absent_unless(str)]
    job: Annotated[dict[str, Any] | None, _absent_unless(dict)]


def encode(checkpoint: Checkpoint) -> str:
    """Compact, ASCII-only JSON: it rides in every re-enqueued request, whatever ONTAP says."""
    p = checkpoint.progress
    header = _Header(
        v=VERSION,
        watch_id=checkpoint.watch_id,
        deadline_at=checkpoint.deadline_at,
        state=p.state,
        changes=p.changes,
        message=p.message,
        job=p.job,
    )
    return json.dumps(header.model_dump(), separators=(",", ":"))


def decode(value: Any) -> Checkpoint:
    """Read the header back; a forged or damaged one makes the request invalid, not the worker."""
    try:
        text = value.decode() if isinstance(value, bytes) else value
        header = _Header.model_validate_json(text)
    except (TypeError, ValueError, UnicodeDecodeError, ValidationError) as exc:
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise InvalidRequest(f"{HEADER}: unreadable ({reason})", kind="checkpoint") from None
    progress = Progress(header.state, header.changes, header.message, header.job)
    return Checkpoint(header.watch_id, header.deadline_at, progress)
