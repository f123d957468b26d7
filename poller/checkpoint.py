"""Pure: a watch's progress as it travels in the ``x-poller-checkpoint`` header.

A live watch is re-enqueued with this header after every published change of state and at least
every ``checkpoint_interval``. Whoever consumes the copy, this worker after a restart or another
one, resumes exactly there: same deadline, same ``n``, so the same change gets the same ``ce-id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from poller.errors import InvalidRequest
from poller.tracking import Progress

HEADER: Final = "x-poller-checkpoint"
VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    watch_id: str
    deadline_at: float
    progress: Progress = field(default_factory=Progress)


def encode(checkpoint: Checkpoint) -> str:
    p = checkpoint.progress
    return json.dumps(
        {
            "v": VERSION,
            "watch_id": checkpoint.watch_id,
            "deadline_at": checkpoint.deadline_at,
            "state": p.state,
            "changes": p.changes,
            "message": p.message,
            "job": p.job,
        },
        separators=(",", ":"),
    )


def decode(value: Any) -> Checkpoint:
    """Read the header back; a forged or damaged one makes the request invalid, not the worker."""
    try:
        text = value.decode() if isinstance(value, bytes) else value
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != VERSION:
            raise ValueError("unknown checkpoint version")
        state, message, job = data["state"], data["message"], data["job"]
        changes = data["changes"]
        progress = Progress(
            state=state if isinstance(state, str) else None,
            changes=changes if isinstance(changes, int) and changes >= 0 else _bad("changes"),
            message=message if isinstance(message, str) else None,
            job=job if isinstance(job, dict) else None,
        )
        return Checkpoint(
            watch_id=str(data["watch_id"]),
            deadline_at=float(data["deadline_at"]),
            progress=progress,
        )
    except (TypeError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{HEADER}: unreadable ({exc})", kind="checkpoint") from None


def _bad(name: str) -> int:
    raise ValueError(f"bad {name}")
