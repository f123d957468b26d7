"""The contract's ``ce-id`` formulas (shared/INTERFACE.md, section 4), written apart from the package.

Tests compare what the worker publishes with these, so a bug in ``poller.events`` cannot hide
behind the code it would be checked against.
"""

from __future__ import annotations

import uuid

END_STATES = frozenset({"success", "failure", "cancelled", "expired"})


def event_id(cluster: str, job: str, n: int, state: str) -> str:
    """``ce-id`` of a change of state: with ``n`` for a non-final state, without it for an end."""
    name = (
        f"ontap-job-poller:{cluster}/{job}/{state}"
        if state in END_STATES
        else f"ontap-job-poller:{cluster}/{job}/{n}/{state}"
    )
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def end_id(cluster: str, job: str, state: str) -> str:
    """``ce-id`` of a job's end: one per job, whatever history the publishing worker saw."""
    assert state in END_STATES, state
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ontap-job-poller:{cluster}/{job}/{state}"))


def watch_end_id(cluster: str, job: str, outcome: str, key: str) -> str:
    """``ce-id`` of a ``watch.*`` end: per watch, ``key`` its correlation_id, else its message_id."""
    name = f"ontap-job-poller:{cluster}/{job}/watch/{outcome}/{key}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))
