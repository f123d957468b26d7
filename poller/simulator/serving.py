"""Serving a simulator with uvicorn, over HTTP or HTTPS, for a process or for a block of code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import uvicorn

from poller.simulator.app import create_app
from poller.simulator.connections import TrackedH11Protocol
from poller.simulator.jobs import Simulator

CertPath = str | os.PathLike[str]


class _Server(uvicorn.Server):
    """A uvicorn server that reports its port once listening and leaves signals to its caller."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[int], object]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The CLI, the demo and tests own SIGINT/SIGTERM; the simulator stops when cancelled.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._on_started(self.servers[0].sockets[0].getsockname()[1])


async def serve(
    host: str,
    port: int,
    sim: Simulator,
    *,
    on_started: Callable[[int], object] | None = None,
    certfile: CertPath | None = None,
    keyfile: CertPath | None = None,
) -> None:
    """Serve `sim` on host:port until cancelled, then shut down cleanly and return.

    Port 0 picks a free port; `on_started` receives the port actually bound. With `certfile`
    (PEM, holding the key too unless `keyfile` is given) it serves HTTPS.
    Raises OSError when the address cannot be bound or the certificate not read.
    """
    if keyfile is not None and certfile is None:
        raise ValueError("a TLS key needs its certificate (certfile)")
    if certfile is not None:
        # Read once here so that a bad file is named; uvicorn's own error does not say which.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except OSError as exc:  # ssl.SSLError included
            files = str(certfile) if keyfile is None else f"{certfile} and key {keyfile}"
            raise OSError(f"cannot load the TLS certificate {files}: {exc}") from exc
    config = uvicorn.Config(
        create_app(sim),
        host=host,
        port=port,
        http=TrackedH11Protocol,
        lifespan="off",
        log_level="warning",
        log_config=None,  # leave the process's logging set-up alone
        access_log=False,
        proxy_headers=False,  # scope["client"] must stay the socket's peer (see drops)
        date_header=False,  # the app sends the cluster's own Date; two would contradict
        timeout_graceful_shutdown=1,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    server = _Server(config, on_started or (lambda _port: None))
    try:
        await server.serve()
    except asyncio.CancelledError:
        if server.started:
            await server.shutdown()
    except SystemExit as exc:
        # uvicorn exits the process when it cannot bind; a library call must not.
        raise OSError(f"simulator could not listen on {host}:{port}") from exc


@contextlib.asynccontextmanager
async def running_simulator(
    sim: Simulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    certfile: CertPath | None = None,
    keyfile: CertPath | None = None,
) -> AsyncIterator[str]:
    """Run `sim` on a real socket for the block; yield its base URL, e.g. http://127.0.0.1:43123.

    With `certfile` (and `keyfile`) it serves HTTPS and the URL starts with https://.
    """
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(host, port, sim, on_started=bound.set_result, certfile=certfile, keyfile=keyfile)
    )
    try:
        waiters: set[asyncio.Future[Any]] = {task, bound}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not bound.done():
            await task  # raises why it stopped
            raise RuntimeError("simulator stopped before it started")
        scheme = "https" if certfile is not None else "http"
        url_host = f"[{host}]" if ":" in host else host
        yield f"{scheme}://{url_host}:{bound.result()}"
    finally:
        task.cancel()
        await task
