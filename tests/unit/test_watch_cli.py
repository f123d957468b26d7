"""`watch --wait` output: a status line rewritten in place on a terminal, plain lines elsewhere."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from poller.client import Event
from poller.watch_cli import WatchDisplay
from tests.fakes import FakeTTY

JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job_event(state: str, message: str, cluster: str = "c1") -> Event:
    headers = {"ce-type": f"ontap.job.{state}", "ce-cluster": cluster}
    return Event(f"job.{cluster}.{state}", headers, {}, {"state": state, "message": message})


def watch_event(outcome: str, error: dict[str, Any]) -> Event:
    headers = {"ce-type": f"ontap.watch.{outcome}", "ce-cluster": "c1"}
    return Event(f"watch.c1.{outcome}", headers, {}, {"error": error})


def play(out: io.StringIO, *events: Event, width: int = 80) -> tuple[WatchDisplay, Clock]:
    clock = Clock()
    display = WatchDisplay(out, JOB, clock=clock, width=width)
    display.refresh()
    for event in events:
        clock.now += 1.5
        display.on_event(event)
    display.finish(events[-1])
    return display, clock


def test_off_a_terminal_each_event_is_a_plain_line_then_a_summary() -> None:
    """Piped output: one line per event (elapsed, routing key, message), one summary, no escapes."""
    out = io.StringIO()
    display, _ = play(
        out,
        job_event("running", "Creating volume"),
        job_event("success", "Complete: Successful"),
    )
    assert not display.live
    lines = out.getvalue().splitlines()
    assert lines == [
        "    1.5s  job.c1.running                 Creating volume",
        "    3.0s  job.c1.success                 Complete: Successful",
        f"job {JOB} success after 3.0s: Complete: Successful (exit 0)",
    ]
    assert "\r" not in out.getvalue()
    assert "\x1b" not in out.getvalue()


def test_on_a_terminal_one_line_is_rewritten_in_place() -> None:
    """TTY: every update starts with a carriage return; only the summary ends the line."""
    out = FakeTTY()
    display, _ = play(
        out,
        job_event("queued", "Queued"),
        job_event("running", "Creating volume"),
        job_event("failure", "Destination volume is full"),
    )
    assert display.live
    text = out.getvalue()
    assert text.count("\n") == 1
    assert text.endswith("\n")
    updates = [part for part in text.split("\r") if part]
    assert updates[0] == "\x1b[Kwaiting       0.0s"
    assert updates[1] == "\x1b[Kqueued        1.5s  Queued"
    assert updates[2] == "\x1b[Krunning       3.0s  Creating volume"
    assert updates[-1] == (
        f"\x1b[Kjob {JOB} failure after 4.5s: Destination volume is full (exit 1)\n"
    )


def test_the_status_line_never_wraps() -> None:
    """A long message is cut one column short of the terminal width."""
    out = FakeTTY()
    display = WatchDisplay(out, JOB, clock=Clock(), width=40)
    display.on_event(job_event("running", "x" * 200))
    rewritten = out.getvalue().split("\r")[-1].removeprefix("\x1b[K")
    assert len(rewritten) == 39


def test_refresh_moves_the_elapsed_time_between_events() -> None:
    """The ticker's refresh rewrites the line with the time spent so far."""
    out = FakeTTY()
    clock = Clock()
    display = WatchDisplay(out, JOB, clock=clock, width=80)
    display.on_event(job_event("running", "Transferring"))
    clock.now += 42.0
    display.refresh()
    assert out.getvalue().split("\r")[-1] == "\x1b[Krunning      42.0s  Transferring"


def test_a_watch_outcome_summarises_the_error_and_exit_code_2() -> None:
    """not_found ends with ONTAP's error message and exit 2."""
    out = io.StringIO()
    play(out, watch_event("not_found", {"message": "entry doesn't exist", "code": "4"}))
    assert out.getvalue().splitlines()[-1] == (
        f"job {JOB} not_found after 1.5s: entry doesn't exist (exit 2)"
    )


def test_abandon_ends_the_status_line_on_a_terminal_only() -> None:
    """After an error the terminal gets a newline, so the error message starts a fresh line."""
    tty, plain = FakeTTY(), io.StringIO()
    for stream in (tty, plain):
        display = WatchDisplay(stream, JOB, clock=Clock(), width=80)
        display.refresh()
        display.abandon()
    assert tty.getvalue().endswith("\n")
    assert plain.getvalue() == ""


async def test_tick_refreshes_until_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ticker keeps rewriting the line while no event arrives."""
    monkeypatch.setattr("poller.watch_cli.TICK_S", 0.01)
    three_writes = asyncio.Event()

    class CountingTTY(FakeTTY):
        def write(self, text: str) -> int:
            written = super().write(text)
            if self.getvalue().count("\r") >= 3:
                three_writes.set()
            return written

    out = CountingTTY()
    display = WatchDisplay(out, JOB, clock=Clock(), width=80)
    ticker = asyncio.create_task(display.tick())
    async with asyncio.timeout(5):
        await three_writes.wait()
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)
    assert out.getvalue().startswith("\r\x1b[Kwaiting")
