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


def test_a_cancelled_read_is_due_again_at_once() -> None:
    """abandoned: no answer came, so nothing is known: read it again now, with its backoff kept."""
    r = reads()
    r.add("j", 0.0)
    r.schedule("j", 0.0)
    list(r.start(r.take_due(0.0, accounted=lambda _u: False)))
    r.abandoned(["j"], 5.0)
    assert not r.in_flight("j")
    assert r.next_due() == 5.0
    assert r.take_due(5.0, accounted=lambda _u: False) == ["j"]


def test_a_cancelled_read_of_a_job_nobody_watches_plans_nothing() -> None:
    """Its watch left during the read: no read is planned; a watch coming back reads it at once."""
    r = reads()
    for job in ("j", "k"):
        r.add(job, 0.0)
        r.schedule(job, 0.0)
    list(r.start(r.take_due(0.0, accounted=lambda _u: False)))
    r.remove("j", 1.0)
    r.abandoned(["j", "k", "never-watched"], 2.0)
    assert not r.in_flight("j") and not r.in_flight("k")
    assert r.take_due(2.0, accounted=lambda _u: False) == ["k"]
    assert r.add("j", 3.0) is False  # back on its schedule: due since 2.0
    assert r.take_due(3.0, accounted=lambda _u: False) == ["j"]


def test_abandoning_a_read_that_already_ended_changes_nothing() -> None:
    """Only reads under way are abandoned: a finished one keeps its backoff."""
    r = reads()
    r.add("j", 0.0)
    r.schedule("j", 0.0)
    list(r.start(r.take_due(0.0, accounted=lambda _u: False)))
    r.finished("j", seen("j"), moved=False, read_at=0.0, now=0.0)
    r.abandoned(["j"], 0.5)
    assert r.next_due() == 1.0


def test_a_parked_job_is_not_read_until_scheduled_again() -> None:
    """park: the feed tells the job's changes; schedule brings it back when it no longer does."""
    r = reads()
    for job in ("j", "k"):
        r.add(job, 0.0)
        r.schedule(job, 1.0)
    r.park("j")
    r.park("unknown")  # a job nobody watches: nothing to park
    assert r.parked() == ["j"]
    assert r.take_due(1.0, accounted=lambda _u: False) == ["k"]
    r.schedule("j", 2.0)
    assert r.parked() == []
    assert r.take_due(2.0, accounted=lambda _u: False) == ["j"]


def test_the_watched_jobs_can_be_walked_while_they_change() -> None:
    """Iterating gives every watched job, and a job dropped meanwhile does not break the walk."""
    r = reads()
    for job in ("a", "b", "c"):
        r.add(job, 0.0)
    walked = []
    for job in r:
        walked.append(job)
        r.remove("c", 0.0)
    assert walked == ["a", "b", "c"]
    assert list(r) == ["a", "b"]


def test_a_job_watched_twice_needs_no_second_plan_and_a_parked_one_coming_back_does() -> None:
    """add: False for a job already read; True for one the feed accounted for before it left."""
    r = reads()
    assert r.add("j", 0.0) is True
    assert r.add("j", 0.0) is False
    r.park("j")
    r.remove("j", 1.0)
    assert r.add("j", 2.0) is True  # parked: the caller decides when to read it


def test_a_job_back_after_missing_its_read_is_read_at_once() -> None:
    """Away when its read came due: back, it is due now, not never."""
    r = reads()
    for job in ("a", "b"):
        r.add(job, 0.0)
        r.schedule(job, 1.0)
    r.remove("b", 0.5)
    assert r.take_due(1.0, accounted=lambda _u: False) == ["a"]
    assert r.add("b", 3.0) is False
    assert r.take_due(3.0, accounted=lambda _u: False) == ["b"]


def test_a_change_brings_the_backoff_back_to_poll_interval_min() -> None:
    """Backed off to 4 s: a change read means the next read 1 s later."""
    r = reads()
    r.add("j", 0.0)
    now = 0.0
    for moved in (False, False, False, True):
        r.schedule("j", now)
        list(r.start(r.take_due(now, accounted=lambda _u: False)))
        r.finished("j", seen("j"), moved=moved, read_at=now, now=now)
        gap = (r.next_due() or 0.0) - now
        now += gap
    assert gap == 1.0


def test_a_read_ending_while_its_job_is_away_keeps_the_timing_for_its_return() -> None:
    """finished while away: no longer being read, and its backoff kept for a watch coming back."""
    r = reads()
    r.add("j", 0.0)
    r.schedule("j", 0.0)
    list(r.start(r.take_due(0.0, accounted=lambda _u: False)))
    r.remove("j", 0.1)
    r.finished("j", seen("j"), moved=False, read_at=0.0, now=0.2)
    assert not r.in_flight("j")
    assert r.next_due() is None  # nobody watches it: no read planned
    assert r.add("j", 0.3) is False
    assert r.take_due(1.0, accounted=lambda _u: False) == ["j"]


def test_a_job_away_is_forgotten_after_away_s_counted_from_when_it_left() -> None:
    """Left at 100 s: kept at 160 s, forgotten after."""
    r = reads()
    r.add("j", 0.0)
    r.remove("j", 100.0)
    assert r.forget_away(100.0 + AWAY_S) == []
    assert r.forget_away(100.0 + AWAY_S + 1) == ["j"]


def test_a_job_away_while_being_read_is_forgotten_only_after_its_read() -> None:
    """In flight past AWAY_S: kept, then forgotten AWAY_S after it was last looked at."""
    r = reads()
    r.add("j", 0.0)
    r.schedule("j", 0.0)
    list(r.start(r.take_due(0.0, accounted=lambda _u: False)))
    r.remove("j", 0.0)
    assert r.forget_away(AWAY_S + 1) == []
    r.finished("j", seen("j"), moved=False, read_at=0.0, now=AWAY_S + 2)
    assert r.forget_away(2 * AWAY_S + 1) == []
    assert r.forget_away(2 * AWAY_S + 2) == ["j"]


def test_scheduling_a_job_being_read_or_not_watched_does_nothing() -> None:
    """Its read's end plans the next one; a job nobody watches is not read."""
    r = reads()
    r.add("j", 0.0)
    r.schedule("j", 0.0)
    list(r.start(r.take_due(0.0, accounted=lambda _u: False)))
    r.schedule("j", 5.0)
    r.schedule("unknown", 5.0)
    assert r.next_due() is None


def test_jobs_nearly_due_wait_for_one_that_is_due() -> None:
    """Due within the coalescing interval rides along with a due job, never alone."""
    r = reads()
    r.add("j", 0.0)
    r.schedule("j", 10.2)
    assert r.take_due(10.0, accounted=lambda _u: False) == []
    assert r.take_due(10.2, accounted=lambda _u: False) == ["j"]


def test_the_coalescing_interval_includes_its_end() -> None:
    """Due exactly coalesce_s after now: read with the job due now."""
    r = reads()
    for job, at in (("a", 10.0), ("b", 10.25)):
        r.add(job, 0.0)
        r.schedule(job, at)
    assert r.take_due(10.0, accounted=lambda _u: False) == ["a", "b"]


def test_reads_go_out_at_most_every_half_coalescing_interval() -> None:
    """After reads at 10.0 (coalescing 0.25 s), the next go out at 10.125, not before."""
    r = reads()
    for job, at in (("a", 10.0), ("b", 10.1)):
        r.add(job, 0.0)
        r.schedule(job, at)
    assert r.take_due(10.0, accounted=lambda _u: False) == ["a", "b"]
    r.add("c", 10.0)
    r.schedule("c", 10.11)
    assert r.take_due(10.12, accounted=lambda _u: False) == []
    assert r.take_due(10.125, accounted=lambda _u: False) == ["c"]


def test_a_job_the_feed_accounts_for_does_not_hold_up_the_others() -> None:
    """Parked on the way, the jobs due after it are still taken."""
    r = reads()
    for job in ("a", "b", "c"):
        r.add(job, 0.0)
        r.schedule(job, 1.0)
    assert r.take_due(1.0, accounted=lambda u: u == "a") == ["b", "c"]
    assert r.parked() == ["a"]
