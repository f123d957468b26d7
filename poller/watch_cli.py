"""The ``watch`` and ``events`` commands, on top of ``poller.client``.

``watch --wait`` on a terminal keeps one status line (state, elapsed, message) rewritten in place and
ends with a one-line summary; anywhere else (a pipe, a log file, CI) it prints one plain line per
event, then the same summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

from poller.amqp import connect
from poller.amqp.subscriber import Subscription
from poller.client import Event, exit_code, publish_watch, wait_for_final
from poller.config import Settings

#: How often the elapsed time of the status line is refreshed on a terminal.
TICK_S: Final = 0.5
_CLEAR_LINE: Final = "\r\x1b[K"


def event_message(event: Event) -> str:
    """The job's ``message``, or the error's for ``watch.*`` events."""
    error = event.data.get("error")
    error_message = error.get("message", "") if isinstance(error, dict) else ""
    return str(event.data.get("message") or error_message or "")


class WatchDisplay:
    """What ``watch --wait`` prints: a live line on a terminal, plain lines elsewhere."""

    def __init__(
        self,
        out: TextIO,
        job_uuid: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self._out = out
        self._job = job_uuid
        self._clock = clock
        self._started = clock()
        self.live = out.isatty()
        self._width = width or shutil.get_terminal_size().columns
        self._state = "waiting"
        self._message = ""

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def on_event(self, event: Event) -> None:
        self._state, self._message = event.outcome, event_message(event)
        if self.live:
            self.refresh()
        else:
            line = f"{self.elapsed_s:7.1f}s  {event.key:<30} {self._message}".rstrip()
            print(line, file=self._out, flush=True)

    def refresh(self) -> None:
        """Rewrite the status line in place (terminal only)."""
        if not self.live:
            return
        line = f"{self._state:<10} {self.elapsed_s:6.1f}s  {self._message}".rstrip()
        # One column short of the width: a line that fills it would wrap and break the rewrite.
        self._out.write(_CLEAR_LINE + line[: max(10, self._width - 1)])
        self._out.flush()

    def finish(self, final: Event) -> None:
        """The one-line summary; on a terminal it replaces the status line."""
        code = exit_code(final)
        message = event_message(final)
        summary = (
            f"job {self._job} {final.outcome} after {self.elapsed_s:.1f}s"
            + (f": {message}" if message else "")
            + f" (exit {code})"
        )
        prefix = _CLEAR_LINE if self.live else ""
        print(prefix + summary, file=self._out, flush=True)

    def abandon(self) -> None:
        """End the status line, so that an error message starts on a line of its own."""
        if self.live:
            print(file=self._out, flush=True)

    async def tick(self) -> None:
        """Keep the elapsed time moving between events, until cancelled."""
        while True:
            await asyncio.sleep(TICK_S)
            self.refresh()


async def watch(
    settings: Settings,
    job_uuid: str,
    cluster: str | None,
    timeout: float | None,
    *,
    wait: bool,
    traceparent: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    connection = await connect(settings, name="ontap-job-poller watch")
    async with connection:
        if not wait:
            correlation_id = await publish_watch(
                connection,
                job_uuid,
                cluster=cluster,
                timeout=timeout,
                queue=settings.watch_queue,
                traceparent=traceparent,
            )
            print(f"published watch of {job_uuid} (correlation_id {correlation_id})", file=out)
            return 0
        display = WatchDisplay(out, job_uuid)
        display.refresh()
        ticker = asyncio.create_task(display.tick()) if display.live else None
        try:
            final = await wait_for_final(
                connection,
                job_uuid,
                cluster=cluster,
                timeout=timeout,
                queue=settings.watch_queue,
                on_event=display.on_event,
                traceparent=traceparent,
            )
        except BaseException:
            display.abandon()
            raise
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        display.finish(final)
        return exit_code(final)


async def print_events(
    settings: Settings, bindings: tuple[str, ...], out: TextIO = sys.stdout
) -> None:
    connection = await connect(settings, name="ontap-job-poller events")
    async with connection:
        subscription = await Subscription.open(
            connection, exchange=settings.events_exchange, bindings=bindings
        )
        async for received in subscription:
            print(Event.from_received(received).as_json(), file=out, flush=True)
