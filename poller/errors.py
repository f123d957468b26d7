"""The one exception tree of ontap-job-poller.

Adapters translate the errors of the libraries they wrap (httpx, aio-pika, pydantic) into these at
their boundary, so the rest of the code never catches a third-party exception::

    PollerError
    ├── ConfigError            the configuration is invalid; ``run`` refuses to start
    ├── InvalidRequest         a watch request is malformed; it is dead-lettered with the reason
    ├── OntapError             a call to ONTAP did not produce a job
    │   ├── OntapRefused       ONTAP answered with an error that retrying will not fix (401, 403, 4xx)
    │   │   ├── JobNotFound    ONTAP answered 404 / "entry doesn't exist"
    │   │   └── FilterRefused  ONTAP answered 400 to a query's filters (an old release, a proxy)
    │   └── OntapUnavailable   transient failures outlasted the retry budget (network, 5xx, 429, 503)
    └── BrokerError            RabbitMQ could not take a message
        └── NotRouted          a mandatory publish found no queue (no worker has declared it yet)
"""

from __future__ import annotations

from typing import Any


class PollerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PollerError):
    """The configuration is invalid. ``str()`` is one line that names the key."""


class InvalidRequest(PollerError):
    """A watch request cannot be accepted. ``str()`` is the reason put in ``x-poller-error``.

    ``kind`` is a short, stable label for metrics: ``size``, ``encoding``, ``json``, ``shape``,
    ``uuid``, ``cluster``, ``timeout`` or ``checkpoint``.
    """

    def __init__(self, message: str, *, kind: str = "shape") -> None:
        super().__init__(message)
        self.kind = kind


class OntapError(PollerError):
    """A call to ONTAP did not produce a job.

    ``error`` is ONTAP's error object (the value of the ``"error"`` key of the documented body), or
    one composed in the same shape when ONTAP gave none.
    """

    def __init__(self, message: str, *, error: dict[str, Any], status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.status = status


class OntapRefused(OntapError):
    """ONTAP refused the call (401, 403 or another 4xx); retrying will not help."""


class JobNotFound(OntapRefused):
    """ONTAP does not know the job: never existed, or purged after it ended."""


class FilterRefused(OntapRefused):
    """ONTAP refused the filters of a collection query (400): the change feed cannot be used."""


class OntapUnavailable(OntapError):
    """ONTAP could not be reached, or kept failing, until the retry budget ran out.

    ``retry_after_s`` is the last ``Retry-After`` ONTAP sent, if any: the next call waits that long.
    """

    def __init__(
        self,
        message: str,
        *,
        error: dict[str, Any],
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, error=error, status=status)
        self.retry_after_s = retry_after_s


class BrokerError(PollerError):
    """RabbitMQ did not take a message (connection lost, channel closed, negative confirm)."""


class NotRouted(BrokerError):
    """A mandatory publish was returned: no queue is bound, usually because no worker has started."""
