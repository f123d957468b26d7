"""Handing observations to the dispatcher: one at a time per job, again when it could not take one.

``Handovers`` sits between what the scheduler reads and the ``Sink`` (the dispatcher). It keeps at
most one hand-over in flight per job, so that an older record never overtakes a newer one; when a
hand-over ends and a newer record of the job is waiting in the view, that one goes next. What the
sink could not take (the broker refused an event, the job's watches were away being re-enqueued)
is offered again a little later, as the latest record then known.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from poller.dispatcher import Applied
from poller.feed import JobView
from poller.tracking import Observation, Seen

#: An observation the dispatcher could not take is offered again after this.
RETRY_S: Final = 2.0


class Sink(Protocol):
    """Where observations go (``dispatcher.Dispatcher``)."""

    async def apply(
        self, job_uuid: str, observation: Observation, *, discovered: bool = False
    ) -> Applied: ...

    def note_reachable(self, error: dict[str, Any] | None) -> None: ...

    def forget_discovered(self) -> None: ...

    def holds(self, job_uuid: str) -> bool: ...


class Handovers:
    """Observations on their way to the sink, and those to offer again."""

    def __init__(
        self,
        sink: Sink,
        view: JobView,
        *,
        interest: Callable[[str], bool | None],
        ended: Callable[[str], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._view = view
        #: Whether somebody wants the job: None (nobody), False (watched), True (discovered only).
        self._interest = interest
        self._ended = ended
        self._spawn = spawn
        self._wake = wake
        self._clock = clock
        self._offering: set[str] = set()
        self._again: dict[str, tuple[float, Observation, bool]] = {}

    def offer(self, job_uuid: str, observation: Observation, *, discovered: bool) -> None:
        if job_uuid in self._offering:
            # The hand-over under way looks for a newer record when it ends; other news waits.
            if not isinstance(observation, Seen):
                self._again[job_uuid] = (0.0, observation, discovered)
            return
        self._offering.add(job_uuid)
        self._spawn(self._hand_over(job_uuid, observation, discovered))

    def busy(self, job_uuid: str) -> bool:
        """Whether an observation of the job is on its way to the sink."""
        return job_uuid in self._offering

    def forget(self, job_uuid: str) -> None:
        self._again.pop(job_uuid, None)

    def next_at(self) -> float | None:
        return min((at for at, _, _ in self._again.values()), default=None)

    def offer_again(self, now: float) -> None:
        """Offer what is due again, as the latest record known: the job may have moved on."""
        for job_uuid, (at, observation, discovered) in list(self._again.items()):
            if at <= now and job_uuid not in self._offering:
                del self._again[job_uuid]
                latest = self._view.get(job_uuid) if isinstance(observation, Seen) else None
                self.offer(job_uuid, Seen(latest) if latest else observation, discovered=discovered)

    def _offer_news(self, job_uuid: str) -> None:
        """A newer record arrived while the last one was being handed over: it goes next."""
        job = self._view.news(job_uuid)
        interest = self._interest(job_uuid)
        if job is not None and interest is not None:
            self.offer(job_uuid, Seen(job), discovered=interest)

    async def _hand_over(self, job_uuid: str, observation: Observation, discovered: bool) -> None:
        try:
            applied = await self._sink.apply(job_uuid, observation, discovered=discovered)
        finally:
            self._offering.discard(job_uuid)
        if applied is Applied.RETRY:
            self._again[job_uuid] = (self._clock() + RETRY_S, observation, discovered)
        else:
            newer = isinstance(observation, Seen) and self._view.handed_over(observation.job)
            if applied is Applied.ENDED:
                self._ended(job_uuid)
            elif newer:
                self._offer_news(job_uuid)
        if job_uuid in self._again and self._again[job_uuid][0] == 0.0:
            self.offer_again(self._clock())
        self._wake()
