"""The only module that speaks HTTP to ONTAP.

httpx does the calls and tenacity the retries. Every httpx error and every HTTP status is mapped,
here and nowhere else, onto the ``OntapError`` family: ``JobNotFound`` (404), ``OntapRefused`` (other
4xx), or, after the retry budget, ``OntapUnavailable``. Redirects are never followed, so a request
can only ever reach the configured cluster URL.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from poller.config import ClusterSettings
from poller.errors import JobNotFound, OntapRefused, OntapUnavailable
from poller.metrics import Metrics
from poller.models import JOB_FIELDS, Job, error_body

JOBS_PATH: Final = "/api/cluster/jobs"
_FIELDS: Final = ",".join(JOB_FIELDS)
_TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
log = structlog.get_logger(__name__)


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


def build_http_client(settings: ClusterSettings) -> httpx.AsyncClient:
    """One client per cluster: basic auth, TLS verified by default, no redirects."""
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
        headers={"Accept": "application/json", "User-Agent": "ontap-job-poller"},
        follow_redirects=False,
    )


class OntapClient:
    """Reads jobs of one cluster. Takes its ``httpx.AsyncClient`` so tests can hand in a fake."""

    def __init__(
        self,
        cluster: str,
        http: httpx.AsyncClient,
        *,
        retry: RetryPolicy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cluster = cluster
        self._http = http
        self._retry = retry or RetryPolicy()
        self._metrics = metrics

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_job(self, job_uuid: str) -> Job:
        """One job. Raises ``JobNotFound``, ``OntapRefused`` or ``OntapUnavailable``."""
        data = await self._call("single", f"{JOBS_PATH}/{job_uuid}", {"fields": _FIELDS})
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
        data = await self._call("collection", JOBS_PATH, params)
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, list):
            raise OntapUnavailable(
                "unreadable collection", error=error_body("no records in answer")
            )
        jobs: dict[str, Job] = {}
        for record in records:
            try:
                job = Job.from_ontap(record)
            except ValueError:
                log.warning("ontap.record_skipped", cluster=self.cluster, record=str(record)[:200])
                continue
            jobs[job.uuid] = job
        return jobs

    async def _call(self, endpoint: str, path: str, params: dict[str, str]) -> Any:
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
                    return await self._attempt(endpoint, path, params)
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

    async def _attempt(self, endpoint: str, path: str, params: dict[str, str]) -> Any:
        started = time.perf_counter()
        outcome = "transient"
        try:
            response = await self._http.get(path, params=params)
            data = _decode(response)
            outcome = "ok"
            return data
        except httpx.TransportError as exc:
            # Connection refused, reset, dropped mid-answer, or timed out: all worth another try.
            raise _Transient(error_body(f"{type(exc).__name__}: {exc}".rstrip(": "))) from None
        except JobNotFound:
            outcome = "not_found"
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


def _decode(response: httpx.Response) -> Any:
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
    fixed = len(base_url) + len(JOBS_PATH) + len("?uuid=&fields=&max_records=10000") + len(_FIELDS)
    per_uuid = 36 + 3  # a UUID and its "|", percent-encoded
    return max(1, (max_url_bytes - fixed) // per_uuid)
