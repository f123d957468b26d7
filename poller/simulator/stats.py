"""Counts of the requests the ONTAP endpoints answered, for benchmarks and tests."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EndpointKind = Literal["single", "collection"]


@dataclass
class UserStats:
    """What one basic-auth user asked for."""

    requests: int = 0
    single: int = 0
    collection: int = 0
    records: int = 0


@dataclass
class Stats:
    """Counts of ONTAP requests: by kind, status, user, client application and query.

    `by_status` holds HTTP statuses, and "dropped", "hung" or "malformed" for the faults that
    answer nothing readable. `by_query` counts collection requests by the fields they filter
    on, e.g. "end_time,state", or "" for none.
    """

    requests: int = 0
    single: int = 0
    collection: int = 0
    records: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_user: dict[str, UserStats] = field(default_factory=dict)
    by_client_app: Counter[str] = field(default_factory=Counter)
    by_query: Counter[str] = field(default_factory=Counter)

    def count(
        self,
        kind: EndpointKind,
        status: int | str,
        *,
        records: int = 0,
        user: str | None = None,
        client_app: str = "",
        query: str = "",
    ) -> None:
        """Record one request: its status, the job records served, who asked, with what.

        `user` is the basic-auth user whose credentials were accepted (None: none were);
        `query` the filter key of a collection request (see `filter_key`).
        """
        self.requests += 1
        self.records += records
        self.by_status[str(status)] += 1
        self.by_client_app[client_app] += 1
        if kind == "single":
            self.single += 1
        else:
            self.collection += 1
            self.by_query[query] += 1
        if user is not None:
            mine = self.by_user.setdefault(user, UserStats())
            mine.requests += 1
            mine.records += records
            if kind == "single":
                mine.single += 1
            else:
                mine.collection += 1

    def as_json(self) -> dict[str, Any]:
        """The counts as the control endpoint shows them."""
        return {
            "requests": self.requests,
            "single": self.single,
            "collection": self.collection,
            "records": self.records,
            "by_status": dict(sorted(self.by_status.items())),
            "by_user": {name: asdict(counts) for name, counts in sorted(self.by_user.items())},
            "by_client_app": dict(sorted(self.by_client_app.items())),
            "by_query": dict(sorted(self.by_query.items())),
        }
