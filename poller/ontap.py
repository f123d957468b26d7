"""The only module that speaks HTTP to ONTAP.

httpx does the calls and tenacity the retries. Every httpx error and every HTTP status is mapped,
here and nowhere else: reads of jobs by uuid (``read``) answer with observations (``Seen``,
``Gone``, ``Refused``, ``Unreachable``), and collection queries (``query``) raise the ``OntapError``
family: ``FilterRefused`` (400 to the filters), ``OntapRefused`` (other 4xx), or, after the retry
budget, ``OntapUnavailable``. Redirects are never followed, so a request can only ever reach the
configured cluster URL, and every call names the poller in ``X-Dot-Client-App``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import structlog
from structlog.contextvars import bound_contextvars
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from poller import __version__
from poller.config import ClusterSettings
from poller.errors import FilterRefused, JobNotFound, OntapRefused, OntapUnavailable
from poller.metrics import Metrics
from poller.models import JOB_FIELDS, Job, error_body
from poller.tracking import Gone, Observation, Refused, Seen, Unreachable

JOBS_PATH: Final = "/api/cluster/jobs"
#: ONTAP's per-application request statistics group calls by this header.
CLIENT_APP: Final = f"ontap-job-poller/{__version__}"
_FIELDS: Final = ",".join(JOB_FIELDS)
_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
#: Records asked for per page of a query; ONTAP may return fewer and link to the rest.
PAGE_RECORDS: Final = 10_000
#: A query that still links to a next page after this many is cut short (a looping proxy).
_MAX_PAGES: Final = 100
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one collection query returned: the jobs, and the cluster's clock when it answered."""

    jobs: list[Job]
    #: The ``Date`` header of the first page, as epoch seconds; None when ONTAP sent none.
    date: float | None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds on retrying one call: attempts, total time, and the exponential backoff with jitter."""

    attempts: int = 5
    total_s: float = 60.0
    initial_wait_s: float = 0.5
    max_wait_s: float = 15.0
    jitter_s: float = 0.5

    @classmethod
    def instant(cls, attempts: int = 3) -> RetryPolicy:
        """No waiting at all: for tests, like stamina's ``set_testing``."""
        return cls(attempts=attempts, initial_wait_s=0.0, max_wait_s=0.0, jitter_s=0.0)


class _Transient(Exception):
    """A failure worth retrying; ``retry_after_s`` is ONTAP's ``Retry-After``, if it sent one."""

    def __init__(self, error: dict[str, Any], retry_after_s: float | None = None) -> None:
        super().__init__(error.get("message", "transient failure"))
        self.error = error
        self.retry_after_s = retry_after_s


def build_http_client(
    settings: ClusterSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """One client per cluster: basic auth, TLS verified by default, no redirects.

    ``transport`` replaces the network, for tests (``httpx.ASGITransport`` to the simulator).
    With ``verify = false`` on an ``https://`` cluster it warns, once for the client's lifetime.
    """
    if settings.verify is False and settings.url.startswith("https://"):
        # Anyone on the path can read the basic-auth password: say so where operators look.
        log.warning("ontap.tls_unverified", url=settings.url)
    verify: bool | ssl.SSLContext = (
        settings.verify
        if isinstance(settings.verify, bool)
        else (ssl.create_default_context(cafile=settings.verify))
    )
    return httpx.AsyncClient(
        base_url=settings.url,
        auth=httpx.BasicAuth(settings.username, settings.secret()),
        verify=verify,
        timeout=httpx.Timeout(
            settings.request_timeout, connect=min(10.0, settings.request_timeout)
        ),
        limits=httpx.Limits(max_connections=settings.max_concurrent_requests),
        headers={
            "Accept": "application/json",
            "User-Agent": CLIENT_APP,
            "X-Dot-Client-App": CLIENT_APP,
        },
        follow_redirects=False,
        transport=transport,
    )


class OntapClient:
    """Reads jobs of one cluster. Takes its ``httpx.AsyncClient`` so tests can hand in a fake.

    At most ``max_concurrent_requests`` calls run at once, whoever makes them.
    """

    def __init__(
        self,
        cluster: str,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        metrics: Metrics | None = None,
        max_concurrent_requests: int = 6,
    ) -> None:
        self.cluster = cluster
        self._http = http
        self._retry = retry or RetryPolicy()
        self._metrics = metrics
        self._calls = asyncio.Semaphore(max_concurrent_requests)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- reads by uuid: observations ---------------------------------------------------------------

    async def read(self, job_uuids: Sequence[str]) -> dict[str, Observation]:
        """What each job is now: one GET for one job, one collection call for several.

        A job missing from a collection answer (gone, or a lagging replica) is confirmed with a
        GET of its own, so that only ONTAP's 404 ever becomes ``Gone``.
        """
        if len(job_uuids) == 1:
            return {job_uuids[0]: await self._read_one(job_uuids[0])}
        try:
            jobs = await self.get_jobs(job_uuids)
        except OntapRefused as exc:
            log.warning("ontap.call_failed", outcome="refused", jobs=len(job_uuids), error=str(exc))
            return dict.fromkeys(job_uuids, Refused(exc.error))
        except OntapUnavailable as exc:
            log.warning(
                "ontap.call_failed", outcome="unreachable", jobs=len(job_uuids), error=str(exc)
            )
            return dict.fromkeys(job_uuids, Unreachable(exc.error, exc.retry_after_s))
        seen: dict[str, Observation] = {u: Seen(jobs[u]) for u in job_uuids if u in jobs}
        missing = [u for u in job_uuids if u not in jobs]
        confirmed = await asyncio.gather(*(self._read_one(u) for u in missing))
        seen.update(zip(missing, confirmed, strict=True))
        return seen

    async def _read_one(self, job_uuid: str) -> Observation:
        with bound_contextvars(job=job_uuid):
            return await self._observe_one(job_uuid)

    async def _observe_one(self, job_uuid: str) -> Observation:
        try:
            return Seen(await self.get_job(job_uuid))
        except JobNotFound as exc:
            return Gone(exc.error)
        except OntapRefused as exc:
            log.warning("ontap.call_failed", outcome="refused", error=str(exc))
            return Refused(exc.error)
        except OntapUnavailable as exc:
            log.warning("ontap.call_failed", outcome="unreachable", error=str(exc))
            return Unreachable(exc.error, exc.retry_after_s)

    async def get_job(self, job_uuid: str) -> Job:
        """One job. Raises ``JobNotFound``, ``OntapRefused`` or ``OntapUnavailable``."""
        data, _ = await self._call("single", f"{JOBS_PATH}/{job_uuid}", {"fields": _FIELDS})
        try:
            return Job.from_ontap(data)
        except ValueError as exc:
            raise OntapUnavailable(
                f"unreadable job {job_uuid}", error=error_body(f"unreadable answer: {exc}")
            ) from None

    async def get_jobs(self, job_uuids: Iterable[str]) -> dict[str, Job]:
        """Many jobs in one call (ONTAP's ``|`` operator); absent jobs are simply not in the answer."""
        wanted = list(job_uuids)
        params = {"uuid": "|".join(wanted), "fields": _FIELDS, "max_records": str(len(wanted))}
        data, _ = await self._call("collection", JOBS_PATH, params)
        return {job.uuid: job for job in self._records(data)}

    # -- collection queries: the change feed ----------------------------------------------------

    async def query(self, filters: Mapping[str, str], *, endpoint: str) -> Answer:
        """Every job matching ``filters`` (ONTAP's query syntax), following ``_links.next``.

        ``endpoint`` labels the calls in the metrics (``ends``, ``active``). Raises
        ``FilterRefused`` when ONTAP answers 400, ``OntapRefused`` or ``OntapUnavailable``.
        """
        params = {**filters, "fields": _FIELDS, "max_records": str(PAGE_RECORDS)}
        data, date = await self._call(endpoint, JOBS_PATH, params, filters=True)
        jobs = self._records(data)
        for _ in range(_MAX_PAGES):
            path = _next_page(data)
            if path is None:
                return Answer(jobs, date)
            data, _ = await self._call(endpoint, path, None, filters=True)
            jobs += self._records(data)
        log.warning("ontap.pages_cut", cluster=self.cluster, endpoint=endpoint, pages=_MAX_PAGES)
        return Answer(jobs, date)

    def _records(self, data: Any) -> list[Job]:
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise OntapUnavailable(
                "unreadable collection", error=error_body("no records in answer")
            )
        jobs = []
        for record in records:
            try:
                jobs.append(Job.from_ontap(record))
            except ValueError:
                log.warning("ontap.record_skipped", cluster=self.cluster, record=str(record)[:200])
        return jobs

    async def _call(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str] | None,
        *,
        filters: bool = False,
    ) -> tuple[Any, float | None]:
        """One call, retried while it fails transiently: ``(data, Date header as epoch)``."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self._retry.attempts) | stop_after_delay(self._retry.total_s),
            wait=self._wait,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self._calls:
                        return await self._attempt(endpoint, path, params, filters)
        except _Transient as exc:
            raise OntapUnavailable(
                str(exc), error=exc.error, retry_after_s=exc.retry_after_s
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True always raises

    def _wait(self, state: RetryCallState) -> float:
        # wait_exponential_jitter's `initial` warns on tenacity 9.2; this works on 8.2 and later.
        backoff = (
            wait_exponential(multiplier=self._retry.initial_wait_s, max=self._retry.max_wait_s)
            + wait_random(0, self._retry.jitter_s)
        )(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after_s if isinstance(exc, _Transient) else None
        # Never sooner than ONTAP asked; backoff alone otherwise.
        return max(backoff, retry_after or 0.0)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "ontap.call_retrying",
            cluster=self.cluster,
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 3),
            reason=str(exc),
        )

    async def _attempt(
        self, endpoint: str, path: str, params: Mapping[str, str] | None, filters: bool
    ) -> tuple[Any, float | None]:
        started = time.perf_counter()
        outcome = "transient"
        try:
            response = await self._http.get(path, params=params)
            data = _decode(response, filters=filters)
            outcome = "ok"
            return data, _http_date(response.headers.get("Date"))
        except httpx.TransportError as exc:
            # Connection refused, reset, dropped mid-answer, or timed out: all worth another try.
            raise _Transient(error_body(f"{type(exc).__name__}: {exc}".rstrip(": "))) from None
        except JobNotFound:
            outcome = "not_found"
            raise
        except FilterRefused:
            outcome = "filter_refused"
            raise
        except OntapRefused:
            outcome = "refused"
            raise
        finally:
            if self._metrics is not None:
                self._metrics.ontap_requests.labels(self.cluster, endpoint, outcome).inc()
                self._metrics.ontap_latency.labels(self.cluster, endpoint).observe(
                    time.perf_counter() - started
                )


def _decode(response: httpx.Response, *, filters: bool = False) -> Any:
    """Map one answer onto data or the error tree."""
    status = response.status_code
    if status >= 500 or status in _TRANSIENT_STATUSES:
        error = _error_of(response) or error_body(f"HTTP {status}")
        raise _Transient(error, retry_after_s=_retry_after(response.headers.get("Retry-After")))
    if 300 <= status < 400:
        # Never followed, so that only the configured URL is ever called; a redirect means that
        # URL is wrong (http for https, say), which no retry fixes. Its body is not ONTAP's.
        error = error_body(f"HTTP {status}: redirect not followed; check the cluster's url")
        raise OntapRefused(error["message"], error=error, status=status)
    if status == 400 and filters:
        # An old release, or a proxy, that does not know the query operators.
        error = _error_of(response) or error_body("HTTP 400 Bad Request")
        raise FilterRefused(f"HTTP 400: {error.get('message')}", error=error, status=status)
    if status == 404:
        error = _error_of(response) or error_body("entry doesn't exist", code="4", target="uuid")
        raise JobNotFound(error.get("message", "not found"), error=error, status=status)
    if status >= 400:
        error = _error_of(response) or error_body(f"HTTP {status} {response.reason_phrase}")
        raise OntapRefused(f"HTTP {status}: {error.get('message')}", error=error, status=status)
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        # A proxy's HTML page in front of ONTAP, say; the next attempt may reach ONTAP itself.
        raise _Transient(error_body(f"HTTP {status} answer is not JSON")) from None


def _error_of(response: httpx.Response) -> dict[str, Any] | None:
    """ONTAP's documented error object, when the body carries one."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _next_page(data: Any) -> str | None:
    """The path and query of ``_links.next``; only ever on the configured cluster."""
    links = data.get("_links") if isinstance(data, dict) else None
    nxt = links.get("next") if isinstance(links, dict) else None
    href = nxt.get("href") if isinstance(nxt, dict) else None
    if not isinstance(href, str) or not href:
        return None
    parts = urlsplit(href)
    # A link is followed on the configured URL whatever host it names: the path and query only.
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def _http_date(value: str | None) -> float | None:
    """An HTTP ``Date`` header as epoch seconds; None when absent or unreadable."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def batch_size(base_url: str, max_url_bytes: int = 4096) -> int:
    """How many UUIDs fit in one collection call with the URL under ``max_url_bytes``."""
    # The URL as sent, without UUIDs: the commas of ``fields`` go percent-encoded.
    params = {"uuid": "", "fields": _FIELDS, "max_records": str(PAGE_RECORDS)}
    fixed = len(str(httpx.URL(base_url + JOBS_PATH, params=params)))
    per_uuid = 36 + 3  # a UUID and its "|", percent-encoded
    return max(1, (max_url_bytes - fixed) // per_uuid)
