"""The change feed's pure parts: the cluster's clock, the ends window, the view of the cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from poller.feed import WINDOW_MARGIN_S, ClusterClock, EndsWindow, JobView, ontap_time
from poller.models import Job

#: The worker's clock in these tests; clusters are ahead of it or behind it.
LOCAL = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()
A, B = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"


def job(uuid: str, state: str, message: str | None = None, **times: str) -> Job:
    raw: dict[str, Any] = {"uuid": uuid, "state": state, **times}
    if message is not None:
        raw["message"] = message
    return Job(raw)


# --- ClusterClock -------------------------------------------------------------------------------


@pytest.mark.parametrize("offset_s", [-7 * 60, -2 * 86400, 0.0, 7 * 60, 3 * 3600])
def test_the_clusters_now_comes_from_its_date_header_not_the_workers_clock(offset_s: float) -> None:
    """Behind or ahead, the cluster's now is its Date, moved on by the time elapsed since."""
    clock = ClusterClock()
    assert clock.now(LOCAL) is None  # no answer yet: nothing is known of the cluster's time
    clock.observe(LOCAL + offset_s, LOCAL)
    assert clock.now(LOCAL) == LOCAL + offset_s
    assert clock.now(LOCAL + 10) == LOCAL + offset_s + 10


def test_an_answer_without_a_date_leaves_the_clock_as_it_was() -> None:
    """A proxy that strips Date: the last known offset stays."""
    clock = ClusterClock()
    clock.observe(LOCAL - 420, LOCAL)
    clock.observe(None, LOCAL + 5)
    assert clock.now(LOCAL + 5) == LOCAL - 415


def test_without_any_date_the_latest_time_shown_is_the_clusters_now_until_a_date_comes() -> None:
    """Times only raise the estimate (an older one says nothing new); a Date then overrules them."""
    clock = ClusterClock()
    clock.observe_times([job(A, "running")], LOCAL)  # no time shown: nothing learnt
    assert clock.now(LOCAL) is None
    clock.observe_times(
        [
            job(A, "running", start_time="2026-11-30T06:52:00-05:00"),  # 11:52 UTC
            job(B, "success", end_time="2026-11-30T11:53:00Z"),
        ],
        LOCAL,
    )
    assert clock.now(LOCAL + 2) == LOCAL - 420 + 2
    clock.observe_times([job(A, "success", end_time="2026-11-30T11:50:00Z")], LOCAL + 2)
    assert clock.now(LOCAL + 2) == LOCAL - 420 + 2
    clock.observe(LOCAL - 600, LOCAL + 2)
    clock.observe_times([job(B, "success", end_time="2026-11-30T11:59:00Z")], LOCAL + 2)
    assert clock.now(LOCAL + 2) == LOCAL - 600


@pytest.mark.parametrize(
    ("seen", "rendered"),
    [
        (None, "2026-11-30T11:53:00+00:00"),
        ("2026-11-30T06:50:00-05:00", "2026-11-30T06:53:00-05:00"),
        ("2026-11-30T17:20:00+05:30", "2026-11-30T17:23:00+05:30"),
        ("2026-11-30T11:50:00Z", "2026-11-30T11:53:00+00:00"),
    ],
)
def test_windows_are_written_in_the_zone_the_cluster_uses(seen: str | None, rendered: str) -> None:
    """T is written as the cluster writes its own times: its zone, whole seconds."""
    clock = ClusterClock()
    if seen is not None:
        clock.learn_zone(job(A, "success", end_time=seen))
    assert clock.render(LOCAL - 420 + 0.9) == rendered


# --- EndsWindow ---------------------------------------------------------------------------------


def test_the_first_window_reaches_back_over_what_ontap_still_holds() -> None:
    """On the cluster's clock, 300 s back: the ends ONTAP has not purged yet."""
    window = EndsWindow()
    window.open(cluster_now=LOCAL - 420, lookback_s=300)
    assert window.since == LOCAL - 720


@pytest.mark.parametrize("offset_s", [-420.0, 420.0])
def test_each_window_starts_a_margin_before_the_last_answers_date(offset_s: float) -> None:
    """Overlapping by the margin: an end in the same second as the last answer is not missed."""
    window = EndsWindow()
    window.open(LOCAL + offset_s, 300)
    window.advance(LOCAL + offset_s + 1, [])
    assert window.since == LOCAL + offset_s + 1 - WINDOW_MARGIN_S
    window.advance(LOCAL + offset_s - 50, [])  # a Date from the past never moves it back
    assert window.since == LOCAL + offset_s + 1 - WINDOW_MARGIN_S


def test_without_a_date_the_latest_end_moves_the_window() -> None:
    """No Date header: the latest end_time the answer shows is the cluster's time we know."""
    window = EndsWindow()
    window.open(LOCAL, 300)
    end = datetime.fromtimestamp(LOCAL + 30, UTC).isoformat()
    window.advance(None, [job(A, "success", end_time=end)])
    assert window.since == LOCAL + 30 - WINDOW_MARGIN_S
    window.advance(None, [])
    assert window.since == LOCAL + 30 - WINDOW_MARGIN_S


# --- JobView ------------------------------------------------------------------------------------


def test_a_record_is_news_until_handed_over_and_the_overlap_is_not_news() -> None:
    """The same end in two overlapping windows is handed over once."""
    view = JobView()
    ended = job(A, "success", end_time="2026-11-30T11:59:59+00:00")
    assert view.record(ended, LOCAL)
    assert not view.handed_over(ended)
    assert not view.record(ended, LOCAL + 1)  # the next window repeats it
    assert view.news(A) is None


@pytest.mark.parametrize(
    ("before", "after", "news"),
    [
        (job(A, "running", "10%"), job(A, "running", "10%"), False),
        (job(A, "running", "10%"), job(A, "running", "20%"), True),
        (job(A, "running"), job(A, "paused"), True),
        (job(A, "paused"), job(A, "running"), True),
    ],
)
def test_news_is_a_new_state_or_message(before: Job, after: Job, news: bool) -> None:
    """Any other difference (a new code, a start_time) is not worth handing over."""
    view = JobView()
    view.record(before, LOCAL)
    view.handed_over(before)
    assert view.record(after, LOCAL) is news


def test_a_newer_record_waiting_behind_a_hand_over_is_reported() -> None:
    """running handed over while paused already arrived: paused is still news."""
    view = JobView()
    running, paused = job(A, "running"), job(A, "paused")
    view.record(running, LOCAL)
    view.record(paused, LOCAL)
    assert view.handed_over(running) is True
    assert view.news(A) is paused


def test_the_feed_accounts_for_jobs_listed_by_the_last_round_and_for_ends() -> None:
    """Listed by the last completed active round, or ended: no read by uuid is needed."""
    view = JobView()
    assert not view.accounts_for(A)
    round_ = view.begin_round()
    view.record(job(A, "running"), LOCAL)
    assert view.end_round(round_) == []
    assert view.accounts_for(A)

    round_ = view.begin_round()
    assert view.accounts_for(A)  # a round under way does not unaccount anything yet
    view.record(job(B, "success", end_time="2026-11-30T11:59:00+00:00"), LOCAL)
    assert view.end_round(round_) == [A]  # A was not listed again: ended, or moved away
    assert not view.accounts_for(A)
    assert view.accounts_for(B)


@pytest.mark.parametrize("offset_s", [-420.0, 420.0])
def test_ended_jobs_are_forgotten_once_ontap_has_purged_them(offset_s: float) -> None:
    """300 s after their end, on the cluster's clock, plus the window's margin."""
    view = JobView(purge_window_s=300)
    cluster_now = LOCAL + offset_s
    end = datetime.fromtimestamp(cluster_now, timezone(timedelta(hours=-5))).isoformat()
    view.record(job(A, "failure", end_time=end), cluster_now)
    view.record(job(B, "running"), cluster_now)

    assert view.forget_purged(cluster_now + 300) == 0
    assert view.forget_purged(cluster_now + 300 + WINDOW_MARGIN_S + 1) == 1
    assert A not in view and B in view


def test_an_end_without_end_time_is_dated_by_the_clusters_clock() -> None:
    """Some releases leave end_time out: the cluster's now when it was seen stands in."""
    view = JobView(purge_window_s=300)
    view.record(job(A, "success"), LOCAL - 420)
    assert view.forget_purged(LOCAL - 420 + 299) == 0
    assert view.forget_purged(LOCAL - 420 + 303) == 1


def test_discovery_makes_every_record_news_again() -> None:
    """Taking over discovery announces everything ONTAP holds, handed over before or not."""
    view = JobView()
    for record in (job(A, "running"), job(B, "success")):
        view.record(record, LOCAL)
        view.handed_over(record)
    view.forget_handovers()
    assert view.news(A) is not None and view.news(B) is not None


# --- what the feed reads of ONTAP's times, and of the view ---------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-30T02:21:44-05:00", datetime(2026, 11, 30, 7, 21, 44, tzinfo=UTC)),
        ("2026-11-30T07:21:44Z", datetime(2026, 11, 30, 7, 21, 44, tzinfo=UTC)),
        ("2026-11-30T12:51:44+05:30", datetime(2026, 11, 30, 7, 21, 44, tzinfo=UTC)),
        ("2026-11-30T07:21:44", None),  # no zone: which clock it is on cannot be known
        ("yesterday", None),
        ("", None),
        (None, None),
        (1764487304, None),
    ],
)
def test_ontap_times_are_read_with_their_zone_or_not_at_all(
    value: object, expected: datetime | None
) -> None:
    """An ONTAP time names its zone; one without, or unreadable, is no time at all."""
    assert ontap_time(value) == expected


def test_a_running_jobs_start_time_tells_the_clusters_zone() -> None:
    """No end yet: the start_time's zone is the one windows are written in."""
    clock = ClusterClock()
    clock.learn_zone(job(A, "running", start_time="2026-11-30T06:50:00-05:00"))
    assert clock.render(LOCAL - 420) == "2026-11-30T06:53:00-05:00"


def test_a_time_without_a_zone_teaches_no_zone() -> None:
    """A zoneless time is skipped: the next time the record shows decides, or UTC stays."""
    clock = ClusterClock()
    clock.learn_zone(
        job(
            A,
            "success",
            end_time="2026-11-30T06:55:00",
            start_time="2026-11-30T06:50:00-05:00",
        )
    )
    assert clock.render(LOCAL - 420) == "2026-11-30T06:53:00-05:00"


def test_the_view_holds_the_latest_record_of_each_job() -> None:
    """get: the last record shown, whether handed over or not; None for a job never shown."""
    view = JobView()
    running, paused = job(A, "running"), job(A, "paused")
    view.record(running, LOCAL)
    view.handed_over(running)
    view.record(paused, LOCAL)
    assert view.get(A) is paused
    assert view.get(B) is None


def test_a_forgotten_job_is_news_again_and_forgetting_twice_is_harmless() -> None:
    """forget: the job leaves the view; a job the view never held is no error."""
    view = JobView()
    running = job(A, "running")
    view.record(running, LOCAL)
    view.handed_over(running)
    view.forget(A)
    view.forget(A)
    view.forget(B)
    assert A not in view and len(view) == 0
    assert view.record(running, LOCAL)  # shown again: news, as for a job never seen


def test_handing_over_a_job_the_view_no_longer_holds_leaves_nothing_waiting() -> None:
    """Forgotten during its hand-over: no newer record can be waiting."""
    view = JobView()
    assert view.handed_over(job(A, "running")) is False


def test_an_end_seen_late_is_dated_by_its_end_time_not_by_when_it_was_seen() -> None:
    """Ended 200 s before the first window showed it: ONTAP purges it 100 s later, not 300 s."""
    view = JobView(purge_window_s=300)
    end = datetime.fromtimestamp(LOCAL - 200, timezone(timedelta(hours=-5))).isoformat()
    view.record(job(A, "success", end_time=end), LOCAL)
    assert view.forget_purged(LOCAL + 100) == 0
    assert view.forget_purged(LOCAL + 100 + WINDOW_MARGIN_S + 1) == 1


def test_an_end_is_kept_up_to_the_purge_window_and_its_margin_exactly() -> None:
    """At purge window plus margin to the second the job stays; it goes only after that."""
    view = JobView(purge_window_s=300)
    end = datetime.fromtimestamp(LOCAL, UTC).isoformat()
    view.record(job(A, "success", end_time=end), LOCAL)
    assert view.forget_purged(LOCAL + 300 + WINDOW_MARGIN_S) == 0
    assert view.forget_purged(LOCAL + 300 + WINDOW_MARGIN_S + 0.5) == 1
