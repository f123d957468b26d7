"""Background tasks of one owner: started, logged if they fail, awaited or cancelled together."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Background:
    """The tasks an owner (a scheduler, a dispatcher) starts and must not lose track of.

    A task that raises is logged as ``<owner>.task_failed`` with its traceback: nothing awaits it,
    so otherwise the error would vanish with it.
    """

    def __init__(self, owner: str, cluster: str) -> None:
        self._event = f"{owner}.task_failed"
        self._cluster = cluster
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def wait(self) -> None:
        """Until the tasks under way now have finished."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def cancel(self) -> None:
        """Cancel every task, and wait until they are gone."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(self._event, cluster=self._cluster, error=repr(exc), exc_info=exc)
