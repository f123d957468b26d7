"""Reads by uuid: when each watched job is read next, and what is read together."""

from __future__ import annotations

from poller.models import Job, error_body
from poller.reads import AWAY_S, UuidReads
from poller.tracking import Policy, Seen, Unreachable

POLICY = Policy(poll_interval_min_s=1.0, poll_interval_max_s=8.0)


def reads(batch_size: int = 3) -> UuidReads:
    return UuidReads(POLICY, batch_size=batch_size, coalesce_s=0.25)


def seen(uuid: str, state: str = "running") -> Seen:
    return Seen(Job({"uuid": uuid, "state": state}))


def test_jobs_due_together_are_read_together_in_chunks() -> None:
    """Due now or within the coalescing interval: one batch; chunks of batch_size."""
    r = reads()
    for n, at in enumerate([10.0, 10.1, 10.2, 10.24, 10.3, 10.6]):
        r.add(f"j{n}", 0.0)
        r.schedule(f"j{n}", at)
    due = r.take_due(10.0, accounted=lambda _u: False)
    assert due == ["j0", "j1", "j2", "j3"]
    assert list(r.start(due)) == [["j0", "j1", "j2"], ["j3"]]
    assert r.take_due(10.05, accounted=lambda _u: False) == []  # reads went out a moment ago


def test_a_job_the_feed_accounts_for_is_parked_not_read() -> None:
    """Due, but the feed tells its changes: it leaves the heap until it no longer does."""
    r = reads()
    r.add("j", 0.0)
    r.schedule("j", 1.0)
    assert r.take_due(1.0, accounted=lambda _u: True) == []
    assert r.parked() == ["j"]
    assert r.next_due() is None


def test_backoff_after_reads_and_retry_after_after_a_failure() -> None:
    """Unchanged: the gap doubles up to the cap; failed: never sooner than Retry-After."""
    r = reads()
    r.add("j", 0.0)
    times = []
    now = 0.0
    for moved in (True, False, False, False, False):
        r.schedule("j", now)
        list(r.start(r.take_due(now, accounted=lambda _u: False)))
        r.finished("j", seen("j"), moved=moved, read_at=now, now=now)
        now = r.next_due() or 0.0
        times.append(now)
    assert times == [1.0, 3.0, 7.0, 15.0, 23.0]
    list(r.start(r.take_due(now, accounted=lambda _u: False)))
    r.finished(
        "j",
        Unreachable(error_body("503"), retry_after_s=30.0),
        moved=False,
        read_at=now,
        now=now + 2,
    )
    assert r.next_due() == now + 2 + 30.0


def test_a_read_under_way_outlives_its_watch_leaving_and_coming_back() -> None:
    """A watch re-enqueued mid-read comes back to a job still being read, not a fresh one."""
    r = reads()
    r.add("j", 0.0)
    r.schedule("j", 0.0)
    list(r.start(r.take_due(0.0, accounted=lambda _u: False)))
    r.remove("j", 0.1)
    assert "j" not in r and r.in_flight("j")
    assert r.add("j", 0.2) is False  # nothing to plan: its read is under way
    assert r.in_flight("j")
    r.finished("j", seen("j"), moved=True, read_at=0.0, now=0.3)
    assert not r.in_flight("j") and r.next_due() == 1.0


def test_a_job_coming_back_is_read_on_its_old_schedule() -> None:
    """Away for a checkpoint's round trip: back on the same schedule, with the same backoff."""
    r = reads()
    for job in ("a", "b"):
        r.add(job, 0.0)
        r.schedule(job, 0.0)
    due = r.take_due(0.0, accounted=lambda _u: False)
    list(r.start(due))
    for job in due:
        r.finished(job, seen(job), moved=False, read_at=0.0, now=0.0)
    r.remove("b", 0.5)
    assert r.add("b", 0.6) is False  # planned already: at 2.0 with a and its backoff
    assert r.take_due(2.0, accounted=lambda _u: False) == ["a", "b"]


def test_a_job_away_too_long_is_forgotten() -> None:
    """Away longer than AWAY_S: its timing goes, and a new watch starts afresh."""
    r = reads()
    r.add("j", 0.0)
    r.remove("j", 0.0)
    assert r.forget_away(AWAY_S) == []
    assert r.forget_away(AWAY_S + 1) == ["j"]
    assert r.add("j", AWAY_S + 2) is True
