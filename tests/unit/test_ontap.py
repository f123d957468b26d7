"""The ONTAP client against httpx.MockTransport: retries, Retry-After, error mapping, queries."""

from __future__ import annotations

import asyncio
import email.utils
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from poller import __version__
from poller.config import ClusterSettings
from poller.errors import FilterRefused, JobNotFound, OntapRefused, OntapUnavailable
from poller.metrics import Metrics
from poller.models import JOB_FIELDS, Job
from poller.ontap import OntapClient, RetryPolicy, batch_size, build_http_client
from poller.tracking import Gone, Observation, Refused, Seen, Unreachable

BASE = "https://cluster1.example.com"
JOB = "1cd8a442-86d1-11e0-ae1c-123478563412"
OTHER = "2cd8a442-86d1-11e0-ae1c-123478563412"
RECORD = {"uuid": JOB, "state": "running", "message": "Working", "description": "vol create"}
NOT_FOUND = {"message": "entry doesn't exist", "code": "4", "target": "uuid", "arguments": []}
NOT_AUTHORIZED = {"message": "not authorized for that command", "code": "6"}
#: Tiny real waits, so that a computed sleep is visible without making the tests slow.
SMALL = RetryPolicy(attempts=4, total_s=30.0, initial_wait_s=0.01, max_wait_s=0.05, jitter_s=0.0)

Answer = httpx.Response | Exception


class Ontap:
    """A scripted ONTAP: answers in order (the last one repeats), every request kept."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def client(self, retry: RetryPolicy = SMALL) -> OntapClient:
        http = httpx.AsyncClient(
            base_url=BASE, transport=httpx.MockTransport(self), auth=("admin", "pw")
        )
        return OntapClient("c1", http, retry=retry)


def ok(body: Any = RECORD) -> httpx.Response:
    return httpx.Response(200, json=body)


def error(status: int, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": body or {"message": "x", "code": "1"}}, headers=headers
    )


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every sleep tenacity asks for, recorded instead of slept (asyncio.sleep is its clock)."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def record(seconds: float, result: Any = None) -> Any:
        asked.append(seconds)
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", record)
    return asked


TRANSIENT: list[tuple[str, Answer]] = [
    ("500", error(500)),
    ("502", error(502)),
    ("503", error(503, **{"Retry-After": "0"})),
    ("504", error(504)),
    ("429", error(429, **{"Retry-After": "0"})),
    ("408", error(408)),
    ("425", error(425)),
    ("connection refused", httpx.ConnectError("connection refused")),
    ("connect timeout", httpx.ConnectTimeout("timed out")),
    ("slow answer", httpx.ReadTimeout("timed out")),
    ("dropped connection", httpx.RemoteProtocolError("peer closed connection")),
    ("reset", httpx.ReadError("connection reset by peer")),
    ("HTML from a proxy", httpx.Response(200, text="<html>gateway</html>")),
]


@pytest.mark.parametrize(("kind", "failure"), TRANSIENT, ids=[k for k, _ in TRANSIENT])
async def test_each_transient_failure_is_retried(
    kind: str, failure: Answer, sleeps: list[float]
) -> None:
    """One failure, then the job: the caller gets the job, after one retry with a backoff."""
    ontap = Ontap(failure, ok())

    job = await ontap.client().get_job(JOB)

    assert job.state == "running", kind
    assert len(ontap.requests) == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize(("kind", "failure"), TRANSIENT, ids=[k for k, _ in TRANSIENT])
async def test_attempts_are_bounded(kind: str, failure: Answer) -> None:
    """A failure that never ends costs exactly `attempts` calls, then OntapUnavailable."""
    ontap = Ontap(failure)

    with pytest.raises(OntapUnavailable) as caught:
        await ontap.client(RetryPolicy.instant(attempts=3)).get_job(JOB)

    assert len(ontap.requests) == 3, kind
    assert caught.value.error["message"]


async def test_unavailable_carries_ontaps_own_error_body() -> None:
    """When ONTAP described its failure, the composed watch.error body is ONTAP's."""
    body = {"message": "Cluster is busy", "code": "2", "target": "cluster"}
    ontap = Ontap(error(503, body))

    with pytest.raises(OntapUnavailable) as caught:
        await ontap.client(RetryPolicy.instant(attempts=2)).get_job(JOB)

    assert caught.value.error == body


async def test_unavailable_carries_the_last_retry_after() -> None:
    """When the budget runs out, ONTAP's last Retry-After travels on, for the next poll."""
    ontap = Ontap(error(429, **{"Retry-After": "9"}))

    with pytest.raises(OntapUnavailable) as caught:
        await ontap.client(RetryPolicy(attempts=1)).get_job(JOB)

    assert caught.value.retry_after_s == 9.0


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("retry_after", ["7", "30"])
async def test_retry_after_in_seconds_is_never_cut_short(
    status: int, retry_after: str, sleeps: list[float]
) -> None:
    """The wait before the next attempt is at least Retry-After, far above the backoff."""
    ontap = Ontap(error(status, **{"Retry-After": retry_after}), ok())

    await ontap.client().get_job(JOB)

    assert len(sleeps) == 1
    assert sleeps[0] >= float(retry_after)


async def test_retry_after_as_an_http_date_is_honoured(sleeps: list[float]) -> None:
    """Retry-After may be a date: the wait lasts at least until then."""
    when = datetime.now(UTC) + timedelta(seconds=20)
    ontap = Ontap(
        error(503, **{"Retry-After": email.utils.format_datetime(when, usegmt=True)}), ok()
    )

    await ontap.client().get_job(JOB)

    assert sleeps[0] >= 18  # the date has whole seconds; the test itself takes a little time


async def test_without_retry_after_the_backoff_grows_and_stays_bounded(sleeps: list[float]) -> None:
    """Exponential backoff between attempts, capped by max_wait_s (jitter 0 here)."""
    ontap = Ontap(error(500))
    policy = RetryPolicy(attempts=5, total_s=30, initial_wait_s=0.01, max_wait_s=0.03, jitter_s=0)

    with pytest.raises(OntapUnavailable):
        await ontap.client(policy).get_job(JOB)

    assert sleeps == sorted(sleeps)
    assert sleeps[0] >= 0.01
    assert max(sleeps) <= 0.03
    assert len(sleeps) == 4  # between five attempts


async def test_jitter_spreads_the_waits(sleeps: list[float]) -> None:
    """With jitter, waits of equal attempts differ: clients that failed together retry apart."""
    policy = RetryPolicy(
        attempts=2, total_s=30, initial_wait_s=0.001, max_wait_s=0.001, jitter_s=0.05
    )
    for _ in range(10):
        await Ontap(error(500), ok()).client(policy).get_job(JOB)

    assert len(set(sleeps)) > 1
    assert all(0.001 <= s <= 0.051 for s in sleeps)


async def test_404_is_job_not_found_with_ontaps_body() -> None:
    """404: JobNotFound, carrying ONTAP's documented error object; not retried."""
    ontap = Ontap(error(404, NOT_FOUND))

    with pytest.raises(JobNotFound) as caught:
        await ontap.client().get_job(JOB)

    assert caught.value.error == NOT_FOUND
    assert caught.value.status == 404
    assert len(ontap.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_are_refusals_with_ontaps_body(status: int) -> None:
    """Refused credentials: OntapRefused with ONTAP's error object, at once, no retry."""
    ontap = Ontap(error(status, NOT_AUTHORIZED))

    with pytest.raises(OntapRefused) as caught:
        await ontap.client().get_job(JOB)

    assert not isinstance(caught.value, JobNotFound)
    assert caught.value.error == NOT_AUTHORIZED
    assert caught.value.status == status
    assert len(ontap.requests) == 1


async def test_a_refusal_without_a_body_gets_a_composed_one() -> None:
    """A bare 403 (a proxy's, say) still yields an error object in ONTAP's shape."""
    ontap = Ontap(httpx.Response(403, text="Forbidden"))

    with pytest.raises(OntapRefused) as caught:
        await ontap.client().get_job(JOB)

    assert set(caught.value.error) >= {"message", "code"}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_never_followed(status: int) -> None:
    """A redirect elsewhere is refused: one request, to the configured host only."""
    ontap = Ontap(
        httpx.Response(status, headers={"Location": "https://evil.example.net/api/cluster/jobs"})
    )

    with pytest.raises(OntapRefused) as caught:
        await ontap.client().get_job(JOB)

    assert [r.url.host for r in ontap.requests] == ["cluster1.example.com"]
    assert "redirect" in caught.value.error["message"]


def test_the_real_client_does_not_follow_redirects_and_verifies_tls() -> None:
    """build_http_client: basic auth, TLS verified by default, redirects off, the cluster's URL."""
    settings = ClusterSettings(url=BASE, username="admin", password="pw")
    client = build_http_client(settings)

    assert client.follow_redirects is False
    assert isinstance(client.auth, httpx.BasicAuth)
    assert str(client.base_url).rstrip("/") == BASE
    asyncio.run(client.aclose())


async def test_single_get_asks_for_every_documented_field() -> None:
    """GET /api/cluster/jobs/{uuid}?fields=<all of them>, with basic auth."""
    ontap = Ontap(ok())

    await ontap.client().get_job(JOB)

    (request,) = ontap.requests
    assert request.url.path == f"/api/cluster/jobs/{JOB}"
    assert set(request.url.params["fields"].split(",")) == set(JOB_FIELDS)
    assert request.headers["Authorization"].startswith("Basic ")


async def test_collection_call_query() -> None:
    """GET /api/cluster/jobs?uuid=a|b&fields=...&max_records=2; absent jobs are just absent."""
    ontap = Ontap(ok({"records": [RECORD], "num_records": 1}))

    jobs = await ontap.client().get_jobs([JOB, OTHER])

    (request,) = ontap.requests
    assert request.url.path == "/api/cluster/jobs"
    assert request.url.params["uuid"] == f"{JOB}|{OTHER}"
    assert set(request.url.params["fields"].split(",")) == set(JOB_FIELDS)
    assert request.url.params["max_records"] == "2"
    assert list(jobs) == [JOB]
    assert jobs[JOB].raw == RECORD


async def test_collection_skips_unreadable_records_and_retries_unreadable_answers() -> None:
    """A record without uuid/state is skipped; an answer without records is unavailable."""
    broken = {"records": [{"uuid": OTHER}, RECORD]}
    assert list(await Ontap(ok(broken)).client().get_jobs([JOB, OTHER])) == [JOB]

    ontap = Ontap(ok({"no": "records"}))
    with pytest.raises(OntapUnavailable):
        await ontap.client(RetryPolicy.instant(attempts=2)).get_jobs([JOB])


async def test_collection_errors_map_like_single_calls() -> None:
    """401 on the collection endpoint is a refusal too, not retried."""
    ontap = Ontap(error(401, NOT_AUTHORIZED))

    with pytest.raises(OntapRefused):
        await ontap.client().get_jobs([JOB, OTHER])
    assert len(ontap.requests) == 1


# --- reads by uuid: observations --------------------------------------------------------------


async def test_a_job_missing_from_a_collection_answer_is_confirmed_with_one_get() -> None:
    """Absent from uuid=a|b (a lagging replica): one GET of its own tells what it is."""
    other = {**RECORD, "uuid": OTHER, "state": "queued"}
    ontap = Ontap(ok({"records": [RECORD]}), ok(other))

    observations = await ontap.client().read([JOB, OTHER])

    assert [r.url.path for r in ontap.requests] == [
        "/api/cluster/jobs",
        f"/api/cluster/jobs/{OTHER}",
    ]
    assert observations == {JOB: Seen(Job(RECORD)), OTHER: Seen(Job(other))}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (error(404, NOT_FOUND), Gone(NOT_FOUND)),
        (error(401, NOT_AUTHORIZED), Refused(NOT_AUTHORIZED)),
        (
            error(503, {"message": "busy", "code": "1"}),
            Unreachable({"message": "busy", "code": "1"}),
        ),
    ],
)
async def test_read_errors_become_observations_at_the_boundary(
    answer: httpx.Response, expected: Observation
) -> None:
    """404 is Gone, 401 Refused, a failure past the retries Unreachable: nothing is raised."""
    ontap = Ontap(answer)
    observations = await ontap.client(RetryPolicy.instant(attempts=2)).read([JOB])
    got = observations[JOB]
    assert type(got) is type(expected)
    assert got.error == expected.error  # type: ignore[union-attr]


async def test_a_failed_collection_read_is_one_observation_per_job() -> None:
    """A refused batch refuses each of its jobs, and no job of it is read again one by one."""
    ontap = Ontap(error(403, NOT_AUTHORIZED))
    observations = await ontap.client().read([JOB, OTHER])
    assert observations == {JOB: Refused(NOT_AUTHORIZED), OTHER: Refused(NOT_AUTHORIZED)}
    assert len(ontap.requests) == 1


# --- collection queries: the change feed ------------------------------------------------------


def page(
    records: list[dict[str, Any]], next_href: str | None = None, **headers: str
) -> httpx.Response:
    links: dict[str, Any] = {"self": {"href": "/api/cluster/jobs"}}
    if next_href is not None:
        links["next"] = {"href": next_href}
    body = {"records": records, "num_records": len(records), "_links": links}
    return httpx.Response(200, json=body, headers=headers)


async def test_a_query_asks_for_every_documented_field_and_follows_next_links() -> None:
    """Filters as given, all fields, a page size; every _links.next followed on the cluster."""
    other = {**RECORD, "uuid": OTHER}
    nxt = "https://elsewhere.example.com/api/cluster/jobs?state=queued%7Crunning&offset=1"
    ontap = Ontap(page([RECORD], nxt, Date="Mon, 30 Nov 2026 07:21:44 GMT"), page([other]))

    answer = await ontap.client().query({"state": "queued|running"}, endpoint="active")

    first, second = ontap.requests
    assert first.url.params["state"] == "queued|running"
    assert set(first.url.params["fields"].split(",")) == set(JOB_FIELDS)
    assert int(first.url.params["max_records"]) >= 1000
    # The link's host is never called: only its path and query, on the configured URL.
    assert second.url.host == "cluster1.example.com"
    assert second.url.params["offset"] == "1"
    assert [j.uuid for j in answer.jobs] == [JOB, OTHER]
    assert answer.date == datetime(2026, 11, 30, 7, 21, 44, tzinfo=UTC).timestamp()


async def test_a_query_without_a_date_header_says_so() -> None:
    """No Date header (a proxy stripped it): the answer's date is None, not the worker's clock."""
    answer = await Ontap(page([RECORD])).client().query({"state": "running"}, endpoint="active")
    assert answer.date is None


async def test_a_400_to_a_querys_filters_is_filter_refused() -> None:
    """An old release or a proxy that does not know the operators: FilterRefused, not retried."""
    ontap = Ontap(error(400, {"message": 'Unexpected argument "end_time".', "code": "262179"}))
    with pytest.raises(FilterRefused) as caught:
        await ontap.client().query({"end_time": ">=2026-11-30T07:21:42+00:00"}, endpoint="ends")
    assert caught.value.error["code"] == "262179"
    assert len(ontap.requests) == 1


async def test_a_400_to_a_read_by_uuid_is_a_plain_refusal() -> None:
    """Only queries turn a 400 into FilterRefused; a 400 to a GET refuses that job."""
    ontap = Ontap(error(400, {"message": "bad", "code": "2"}))
    with pytest.raises(OntapRefused) as caught:
        await ontap.client().get_job(JOB)
    assert not isinstance(caught.value, FilterRefused)


async def test_every_call_names_the_poller() -> None:
    """X-Dot-Client-App and User-Agent are ontap-job-poller/<version> on every call."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return page([RECORD]) if request.url.path.endswith("jobs") else ok()

    settings = ClusterSettings(url=BASE, username="admin", password="pw")
    http = build_http_client(settings, transport=httpx.MockTransport(handler))
    client = OntapClient("c1", http, retry=SMALL)
    await client.get_job(JOB)
    await client.get_jobs([JOB, OTHER])
    await client.query({"state": "running"}, endpoint="active")
    await client.aclose()

    expected = f"ontap-job-poller/{__version__}"
    assert [(r.headers["X-Dot-Client-App"], r.headers["User-Agent"]) for r in seen] == [
        (expected, expected)
    ] * 3


async def test_calls_to_one_cluster_never_exceed_max_concurrent_requests() -> None:
    """Twenty reads at once run at most three at a time."""
    running = most = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return ok()

    http = httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(handler))
    client = OntapClient("c1", http, retry=SMALL, max_concurrent_requests=3)
    await asyncio.gather(*(client.read([JOB]) for _ in range(20)))
    assert most == 3


# --- what the calls report: metrics and documented log lines ----------------------------------


def counted(metrics: Metrics) -> dict[tuple[str, str], float]:
    """ontap_poller_ontap_requests_total, by (endpoint, outcome)."""
    (family,) = metrics.ontap_requests.collect()
    return {
        (s.labels["endpoint"], s.labels["outcome"]): s.value
        for s in family.samples
        if s.name.endswith("_total") and s.labels["cluster"] == "c1"
    }


def timed(metrics: Metrics, sample: str = "_count") -> dict[str, float]:
    """How many calls ontap_poller_ontap_request_seconds observed (or their sum), by endpoint."""
    (family,) = metrics.ontap_latency.collect()
    return {
        s.labels["endpoint"]: s.value
        for s in family.samples
        if s.name.endswith(sample) and s.labels["cluster"] == "c1"
    }


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([ok()], {("single", "ok"): 1}),
        ([error(404, NOT_FOUND)], {("single", "not_found"): 1}),
        ([error(401, NOT_AUTHORIZED)], {("single", "refused"): 1}),
        ([error(400)], {("single", "refused"): 1}),
        ([httpx.Response(302, headers={"Location": "/"})], {("single", "refused"): 1}),
        ([error(503), ok()], {("single", "transient"): 1, ("single", "ok"): 1}),
        ([httpx.ConnectError("refused"), ok()], {("single", "transient"): 1, ("single", "ok"): 1}),
        (
            [httpx.Response(200, text="<html/>"), ok()],
            {("single", "transient"): 1, ("single", "ok"): 1},
        ),
    ],
)
async def test_each_call_is_counted_by_endpoint_and_outcome(
    answers: list[Answer], expected: dict[tuple[str, str], float]
) -> None:
    """ontap_poller_ontap_requests_total{endpoint, outcome}: one count and one latency per call."""
    metrics = Metrics()
    ontap = Ontap(*answers)
    http = httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(ontap))
    client = OntapClient("c1", http, retry=RetryPolicy.instant(), metrics=metrics)
    await client.read([JOB])
    assert counted(metrics) == expected
    assert timed(metrics) == {"single": len(answers)}
    assert 0 <= timed(metrics, "_sum")["single"] < 5  # seconds the calls took, in memory


async def test_batches_and_feed_queries_are_counted_under_their_own_endpoint() -> None:
    """collection for uuid batches; the feed's own names for its queries; 400 filter_refused."""
    metrics = Metrics()
    ontap = Ontap(ok({"records": [RECORD]}), page([RECORD]), error(400))
    http = httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(ontap))
    client = OntapClient("c1", http, retry=RetryPolicy.instant(), metrics=metrics)
    await client.get_jobs([JOB, OTHER])
    await client.query({"state": "running"}, endpoint="active")
    with pytest.raises(FilterRefused):
        await client.query({"end_time": ">=2026-11-30T07:21:42+00:00"}, endpoint="ends")
    assert counted(metrics) == {
        ("collection", "ok"): 1,
        ("active", "ok"): 1,
        ("ends", "filter_refused"): 1,
    }


async def test_a_retry_is_logged_with_its_attempt_and_wait() -> None:
    """ontap.call_retrying: which attempt failed, why, and the wait before the next."""
    busy = error(503, {"message": "Cluster is busy", "code": "2"}, **{"Retry-After": "0"})
    ontap = Ontap(busy, httpx.ConnectError("connection refused"), ok())
    with capture_logs() as logs:
        await ontap.client(RetryPolicy.instant()).get_job(JOB)
    retries = [e for e in logs if e["event"] == "ontap.call_retrying"]
    assert [(e["cluster"], e["attempt"], e["wait_s"], e["reason"]) for e in retries] == [
        ("c1", 1, 0.0, "Cluster is busy"),
        ("c1", 2, 0.0, "ConnectError: connection refused"),
    ]


@pytest.mark.parametrize(
    ("answer", "outcome", "said"),
    [
        (error(403, NOT_AUTHORIZED), "refused", "HTTP 403: not authorized for that command"),
        (error(503, {"message": "Cluster is busy", "code": "2"}), "unreachable", "Cluster is busy"),
        (
            httpx.ConnectError("connection refused"),
            "unreachable",
            "ConnectError: connection refused",
        ),
    ],
)
async def test_a_call_failing_for_good_is_logged_with_its_outcome_and_error(
    answer: Answer, outcome: str, said: str
) -> None:
    """ontap.call_failed: refused or unreachable, and the error (HTTP 401, ...), single or batch."""
    with capture_logs() as logs:
        await Ontap(answer).client(RetryPolicy.instant(attempts=1)).read([JOB])
        await Ontap(answer).client(RetryPolicy.instant(attempts=1)).read([JOB, OTHER])
    failed = [e for e in logs if e["event"] == "ontap.call_failed"]
    assert [(e["outcome"], e["error"]) for e in failed] == [(outcome, said), (outcome, said)]
    assert failed[1]["jobs"] == 2


async def test_an_unreadable_record_is_logged_and_skipped() -> None:
    """ontap.record_skipped names the cluster and shows the record."""
    with capture_logs() as logs:
        answer = await Ontap(page([{"uuid": OTHER}, RECORD])).client().query({}, endpoint="active")
    assert [j.uuid for j in answer.jobs] == [JOB]
    assert [(e["event"], e["cluster"]) for e in logs] == [("ontap.record_skipped", "c1")]
    assert OTHER in logs[0]["record"]


async def test_a_huge_unreadable_record_is_logged_cut_to_200_characters() -> None:
    """A proxy's megabyte of nonsense does not become a megabyte of log."""
    with capture_logs() as logs:
        await (
            Ontap(page([{"uuid": OTHER, "junk": "x" * 10_000}]))
            .client()
            .query({}, endpoint="active")
        )
    assert len(logs[0]["record"]) == 200


async def test_a_query_stops_after_100_pages_and_says_so() -> None:
    """A proxy linking to itself forever: 101 calls, the records read so far, ontap.pages_cut."""
    dated = {"Date": "Mon, 30 Nov 2026 07:21:44 GMT"}
    ontap = Ontap(page([RECORD], "/api/cluster/jobs?state=running&offset=1", **dated))
    with capture_logs() as logs:
        answer = await ontap.client().query({"state": "running"}, endpoint="active")
    assert len(ontap.requests) == 101
    assert len(answer.jobs) == 101
    assert answer.date == datetime(2026, 11, 30, 7, 21, 44, tzinfo=UTC).timestamp()
    assert [(e["event"], e["cluster"], e["endpoint"], e["pages"]) for e in logs] == [
        ("ontap.pages_cut", "c1", "active", 100)
    ]


async def test_every_page_is_counted_under_the_querys_endpoint_and_may_refuse_the_filters() -> None:
    """A next page is the same query: counted as such, and a 400 to it is FilterRefused."""
    metrics = Metrics()
    ontap = Ontap(page([RECORD], "/api/cluster/jobs?state=running&offset=1"), page([]), error(400))
    http = httpx.AsyncClient(base_url=BASE, transport=httpx.MockTransport(ontap))
    client = OntapClient("c1", http, retry=RetryPolicy.instant(), metrics=metrics)
    await client.query({"state": "running"}, endpoint="active")
    assert counted(metrics) == {("active", "ok"): 2}
    ontap.answers = [page([RECORD], "/api/cluster/jobs?state=running&offset=1"), error(400)]
    with pytest.raises(FilterRefused):
        await client.query({"state": "running"}, endpoint="active")


# --- the edges of the mapping -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "expected_s"),
    [
        ("12", 12.0),
        ("1.5", 1.5),
        ("-5", 0.0),  # never a wait in the past
        ("Mon, 30 Nov 2020 07:21:44 GMT", 0.0),  # a date gone by: no wait at all
        ("soon", None),
        ("", None),
    ],
)
async def test_retry_after_travels_on_as_seconds_from_now(
    retry_after: str, expected_s: float | None
) -> None:
    """Delta-seconds or an HTTP date; unreadable is no Retry-After at all."""
    ontap = Ontap(error(503, **{"Retry-After": retry_after}))
    observations = await ontap.client(RetryPolicy.instant(attempts=1)).read([JOB])
    assert observations[JOB] == Unreachable({"message": "x", "code": "1"}, expected_s)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(404), {"message": "entry doesn't exist", "code": "4", "target": "uuid"}),
        (
            httpx.Response(404, json=["not", "an", "object"]),
            {"message": "entry doesn't exist", "code": "4", "target": "uuid"},
        ),
        (
            httpx.Response(404, json={"error": "gone"}),
            {"message": "entry doesn't exist", "code": "4", "target": "uuid"},
        ),
        (httpx.Response(403, text="Forbidden"), {"message": "HTTP 403 Forbidden", "code": "0"}),
        (httpx.Response(500, text="oops"), {"message": "HTTP 500", "code": "0"}),
        (
            httpx.Response(301),
            {"message": "HTTP 301: redirect not followed; check the cluster's url", "code": "0"},
        ),
        (
            httpx.Response(399),
            {"message": "HTTP 399: redirect not followed; check the cluster's url", "code": "0"},
        ),
    ],
)
async def test_an_answer_without_ontaps_error_object_gets_one_composed(
    answer: httpx.Response, expected: dict[str, str]
) -> None:
    """A bare status (a proxy's) still reaches watch.error as an error object in ONTAP's shape."""
    observations = await Ontap(answer).client(RetryPolicy.instant(attempts=1)).read([JOB])
    assert observations[JOB].error == expected  # type: ignore[union-attr]


REDIRECT = "redirect not followed; check the cluster's url"


@pytest.mark.parametrize(
    ("status", "raised", "said"),
    [
        (300, OntapRefused, f"HTTP 300: {REDIRECT}"),
        (399, OntapRefused, f"HTTP 399: {REDIRECT}"),
        (400, FilterRefused, "HTTP 400: x"),
        (404, JobNotFound, "x"),
        (425, OntapUnavailable, "x"),
        (499, OntapRefused, "HTTP 499: x"),
        (500, OntapUnavailable, "x"),
    ],
)
async def test_the_status_of_a_querys_answer_decides_the_error(
    status: int, raised: type[Exception], said: str
) -> None:
    """The boundaries of each family of statuses, for the feed's queries, and what is logged."""
    ontap = Ontap(error(status))
    with pytest.raises(raised) as caught:
        await ontap.client(RetryPolicy.instant(attempts=1)).query({}, endpoint="ends")
    assert type(caught.value) is raised
    assert str(caught.value) == said  # the error of feed.filters_refused and feed.refused
    if isinstance(caught.value, OntapRefused):
        assert caught.value.status == status


async def test_a_query_asks_for_pages_of_ten_thousand_records() -> None:
    """max_records=10000: a cluster's active set in one call, however large it grows."""
    ontap = Ontap(page([RECORD]))
    await ontap.client().query({"state": "running"}, endpoint="active")
    assert ontap.requests[0].url.params["max_records"] == "10000"


@pytest.mark.parametrize("href", ["", None, 7])
async def test_a_next_link_that_is_not_one_ends_the_query(href: object) -> None:
    """_links.next without a usable href: the answer so far, no further call."""
    body = {"records": [RECORD], "_links": {"next": {"href": href}}}
    ontap = Ontap(ok(body), page([]))
    answer = await ontap.client().query({}, endpoint="active")
    assert len(ontap.requests) == 1 and [j.uuid for j in answer.jobs] == [JOB]


async def test_links_that_are_not_an_object_end_the_query() -> None:
    """_links as a string (a proxy's idea): the answer so far, no further call."""
    ontap = Ontap(ok({"records": [RECORD], "_links": "none"}), page([]))
    answer = await ontap.client().query({}, endpoint="active")
    assert len(ontap.requests) == 1 and [j.uuid for j in answer.jobs] == [JOB]


async def test_a_next_link_without_a_query_is_followed_on_its_path() -> None:
    """A link to a path alone is called as that path, on the configured URL."""
    ontap = Ontap(page([RECORD], "https://elsewhere.example.com/api/cluster/jobs/page2"), page([]))
    await ontap.client().query({}, endpoint="active")
    assert str(ontap.requests[1].url) == f"{BASE}/api/cluster/jobs/page2"


@pytest.mark.parametrize("date", ["yesterday", "Mon, 99 Nov 2026 07:21:44 GMT"])
async def test_an_unreadable_date_header_is_no_date(date: str) -> None:
    """The cluster's time is only ever taken from a Date that reads as one."""
    answer = await Ontap(page([RECORD], Date=date)).client().query({}, endpoint="active")
    assert answer.date is None


#: Base URLs of every length over the span of one UUID in a batch (39 bytes), and real ones.
BASES = [BASE, "http://ontap", "https://10.0.0.1:8443"] + [
    f"https://c{'x' * n}.lab" for n in range(39)
]


@pytest.mark.parametrize("base", BASES)
async def test_a_batch_of_batch_size_uuids_fits_in_a_4096_byte_url_and_no_more(base: str) -> None:
    """batch_size: the most uuids whose collection call stays within 4096 bytes of URL.

    The reckoning keeps 5 bytes spare (no "|" before the first uuid; fewer digits of max_records
    than 10000): one uuid more would come within those 5 bytes of the bound or past it.
    """
    urls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(len(str(request.url)))
        return ok({"records": []})

    http = httpx.AsyncClient(base_url=base, transport=httpx.MockTransport(handler))
    client = OntapClient("c1", http, retry=SMALL)
    size = batch_size(base)
    await client.get_jobs([JOB] * size)
    await client.get_jobs([JOB] * (size + 1))
    fitting, one_more = urls
    assert fitting <= 4096 < one_more + 5


@pytest.mark.parametrize(("timeout_s", "connect_s"), [(30.0, 10.0), (5.0, 5.0)])
def test_a_cluster_is_given_request_timeout_and_at_most_10_s_to_connect(
    timeout_s: float, connect_s: float
) -> None:
    """request_timeout bounds each call; connecting never waits longer than 10 s."""
    settings = ClusterSettings(
        url=BASE,
        username="admin",
        password="pw",
        request_timeout=timeout_s,
        max_concurrent_requests=4,
    )
    client = build_http_client(settings)
    assert client.timeout == httpx.Timeout(timeout_s, connect=connect_s)
    assert client.headers["Accept"] == "application/json"
    asyncio.run(client.aclose())


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (httpx.ConnectError("connection refused"), "ConnectError: connection refused"),
        (httpx.ReadTimeout(""), "ReadTimeout"),
        (httpx.Response(200, text="<html/>"), "HTTP 200 answer is not JSON"),
        (ok({"uuid": JOB}), "unreadable answer: job record lacks uuid or state"),
    ],
)
async def test_a_read_that_found_no_job_tells_why_in_ontaps_shape(
    failure: Answer, message: str
) -> None:
    """The error of the watch.error body: the failure named, in ONTAP's error shape."""
    observations = await Ontap(failure).client(RetryPolicy.instant(attempts=1)).read([JOB])
    assert observations == {JOB: Unreachable({"message": message, "code": "0"})}


@pytest.mark.parametrize(
    "answer",
    [
        error(503, {"message": "Cluster is busy", "code": "2"}, **{"Retry-After": "7"}),
        ok({"no": "records"}),
        ok(["not", "an", "object"]),
    ],
)
async def test_a_batch_that_cannot_be_read_is_unreachable_for_each_of_its_jobs(
    answer: httpx.Response,
) -> None:
    """ONTAP's error and Retry-After for every job of the batch, or a composed error."""
    observations = await Ontap(answer).client(RetryPolicy.instant(attempts=1)).read([JOB, OTHER])
    expected = (
        Unreachable({"message": "Cluster is busy", "code": "2"}, 7.0)
        if answer.status_code == 503
        else Unreachable({"message": "no records in answer", "code": "0"})
    )
    assert observations == {JOB: expected, OTHER: expected}


async def test_the_backoff_doubles_from_initial_wait_up_to_max_wait(sleeps: list[float]) -> None:
    """No Retry-After, no jitter: 10 ms, 20 ms, then the 30 ms cap."""
    policy = RetryPolicy(attempts=5, total_s=30, initial_wait_s=0.01, max_wait_s=0.03, jitter_s=0)
    with pytest.raises(OntapUnavailable):
        await Ontap(error(500)).client(policy).get_job(JOB)
    assert sleeps == pytest.approx([0.01, 0.02, 0.03, 0.03])


async def test_failures_ontap_did_not_describe_are_logged_in_their_own_words() -> None:
    """A bare 400 to the filters, an error object without a message, an unreadable job or batch."""
    with pytest.raises(FilterRefused) as refused:
        await Ontap(httpx.Response(400)).client().query({}, endpoint="ends")
    assert str(refused.value) == "HTTP 400: HTTP 400 Bad Request"  # feed.filters_refused's error

    wordless = httpx.Response(503, json={"error": {"code": "2"}})
    with capture_logs() as logs:
        await Ontap(wordless, ok()).client(RetryPolicy.instant()).get_job(JOB)
        await Ontap(ok({"uuid": JOB})).client().read([JOB])
        await (
            Ontap(ok({"no": "records"})).client(RetryPolicy.instant(attempts=1)).read([JOB, OTHER])
        )
    assert [(e["event"], e.get("reason") or e.get("error")) for e in logs] == [
        ("ontap.call_retrying", "transient failure"),
        ("ontap.call_failed", f"unreadable job {JOB}"),
        ("ontap.call_failed", "unreadable collection"),
    ]
