"""Operations: structured logging and the ``/healthz``, ``/readyz`` and ``/metrics`` endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sys
from collections.abc import Callable, Generator, MutableMapping
from typing import Any, Final

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from poller.errors import ConfigError
from poller.metrics import Metrics

_SECRET_KEYS: Final = re.compile(r"pass(word)?|secret|authorization|token", re.IGNORECASE)
_URL_CREDENTIALS: Final = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")
REDACTED: Final = "[redacted]"


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Never log a password, a token or an Authorization header, nor credentials inside a URL."""
    for key, value in list(event_dict.items()):
        if _secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str) and "://" in value:
            event_dict[key] = redact_url(value)
    return event_dict


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    # Log lines reuse a few dozen keys: the pattern is searched once per key, not once per line.
    return _SECRET_KEYS.search(key) is not None


def redact_url(text: str) -> str:
    """``amqp://user:secret@host/`` -> ``amqp://[redacted]@host/``."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def configure_logging(
    log_format: str = "auto", level: int = logging.INFO, *, for_good: bool = False
) -> None:
    """JSON lines in containers, a readable console on a terminal (``auto`` picks by TTY).

    Libraries that log through the standard library (aio-pika, uvicorn, httpx) are rendered by
    the same processors, so a container's log stays one JSON object per line, secrets redacted.
    ``for_good``: this process configures logging once and never again (the command line), so
    each logger is built once rather than at every call: about a tenth of the worker's CPU at
    full rate. Tests, which configure it again and again, leave it off.
    """
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=for_good,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Libraries stay quiet unless something is wrong.
    root.setLevel(max(level, logging.WARNING))


def create_ops_app(metrics: Metrics, ready: Callable[[], bool]) -> Starlette:
    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_request: Request) -> Response:
        if ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ]
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The worker owns SIGTERM and SIGINT (graceful stop); uvicorn must not take them over.
        yield


class OpsServer:
    """uvicorn serving the ops app inside the worker's event loop."""

    def __init__(self, app: Starlette, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - a sidecar's probes come from outside the container
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            log_level="warning",
            log_config=None,
            access_log=False,
        )
        self._server = _Server(config)
        self._where = f"{host}:{port}"
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Serve in the background; return the bound port (useful with port 0).

        Raises ``ConfigError`` naming ``http_port`` when the port cannot be bound.
        """
        self._task = asyncio.create_task(self._serve())
        while not self._server.started:
            if self._task.done():
                await self._task  # raises why it stopped
                raise ConfigError(f"http_port: the ops server on {self._where} stopped at start")
            await asyncio.sleep(0.01)
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind; a worker reports it as configuration.
            raise ConfigError(
                f"http_port: cannot listen on {self._where} (in use?); choose another port, "
                "or 0 to turn the ops endpoints off"
            ) from None

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
