"""The simulator's hold on its sockets, for the faults that answer nothing at all.

ASGI gives an app no handle on its socket: a dropped connection must cut the socket itself,
and a hung request must notice when the client gives up.
"""

from __future__ import annotations

import asyncio

import httpx
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

# Open connections by (server address, client address), the pair uvicorn puts in each scope.
_OPEN_CONNECTIONS: dict[tuple[object, object], asyncio.Transport] = {}


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised for a dropped connection where there is no socket to cut (in-process transports).

    It is an httpx transport error, so a client under test meets the same class of error as
    against the real server.
    """


class TrackedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, registering each connection so a fault can drop it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.client is not None:
            _OPEN_CONNECTIONS[(self.server, self.client)] = transport

    def connection_lost(self, exc: Exception | None) -> None:
        _OPEN_CONNECTIONS.pop((self.server, self.client), None)
        super().connection_lost(exc)


async def drop_connection(request: Request) -> Response:
    """Cut the TCP connection, so the client gets no answer at all."""
    transport = _OPEN_CONNECTIONS.get((request.scope.get("server"), request.scope.get("client")))
    if transport is None:
        raise ConnectionDropped("simulated dropped connection")
    transport.abort()
    # Wait for uvicorn to notice: it then discards whatever is sent and logs nothing.
    async with asyncio.timeout(5):
        await _disconnected(request)
    return Response(status_code=500)  # never reaches the client


async def client_left_during(request: Request, seconds: float) -> bool:
    """Hold the request for `seconds` without answering; True if the client hung up meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await _disconnected(request)
    except TimeoutError:
        return False
    return True


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
