"""HTTP face of the simulator: ONTAP's jobs endpoints, its own control endpoints, and serving.

The ONTAP endpoints behave as documented for `GET /api/cluster/jobs[/{uuid}]`; the control
endpoints under `/_sim` (no auth) create jobs, set faults and read counts (docs/simulator.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from poller.simulator.faults import Fault, FaultPlan
from poller.simulator.jobs import (
    JOBS_PATH,
    DuplicateJobError,
    EndpointKind,
    JobSpec,
    OntapError,
    Simulator,
    Stats,
    not_authorized,
    not_found,
    requested_fields,
    select_fields,
)

DEFAULT_MAX_RECORDS = 10_000
Answer = Callable[[Simulator, Request], Response]
_M = TypeVar("_M", bound=BaseModel)


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised for a dropped connection where there is no socket to cut (in-process transports).

    It is an httpx transport error, so a client under test meets the same class of error as
    against the real server.
    """


CHALLENGE = {"WWW-Authenticate": 'Basic realm="ONTAP"'}


def create_app(sim: Simulator) -> Starlette:
    """The ASGI app serving `sim`."""
    app = Starlette(
        routes=[
            Route(JOBS_PATH, _collection, methods=["GET"]),
            Route(JOBS_PATH + "/{uuid}", _single, methods=["GET"]),
            Mount("/_sim", routes=_control_routes()),
        ],
        exception_handlers={_ControlError: _control_error},
    )
    app.state.sim = sim
    return app


def _sim(request: Request) -> Simulator:
    sim: Simulator = request.app.state.sim
    return sim


# --- ONTAP endpoints -------------------------------------------------------------------------


async def _single(request: Request) -> Response:
    return await _ontap(request, "single", _answer_single)


async def _collection(request: Request) -> Response:
    return await _ontap(request, "collection", _answer_collection)


async def _ontap(request: Request, kind: EndpointKind, answer: Answer) -> Response:
    """Faults first (as a load balancer would), then auth, then the answer; count each."""
    sim = _sim(request)
    fault = sim.decide_fault()
    if fault.latency_s > 0:
        await asyncio.sleep(fault.latency_s)
    if fault.kind == "drop":
        sim.stats.count(kind, "dropped")
        return await _drop_connection(request)
    response = _fault_response(fault) or _refuse_unauthenticated(sim, request)
    if response is None:
        try:
            response = answer(sim, request)
        except OntapError as error:
            response = _error(error)
    sim.stats.count(kind, response.status_code)
    return response


def _error(error: OntapError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error.body}, error.status, headers)


def _fault_response(fault: Fault) -> Response | None:
    status = fault.status or 500
    if fault.kind == "override" and status in (401, 403):
        return _error(not_authorized(status), CHALLENGE)
    if fault.kind == "throttle":
        message = "too many requests" if status == 429 else "service unavailable"
        headers = {"Retry-After": str(fault.retry_after_s or 0)}
        return _error(OntapError(status, message, "1"), headers)
    if fault.kind in ("override", "error"):
        return _error(OntapError(status, "simulated failure", "1"))
    return None


def _refuse_unauthenticated(sim: Simulator, request: Request) -> Response | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    try:
        username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 inside
        return _error(not_authorized(), CHALLENGE)
    # Compare both in constant time, so the answer time gives nothing away.
    user_ok = secrets.compare_digest(username.encode(), sim.username.encode())
    password_ok = secrets.compare_digest(password.encode(), sim.password.encode())
    if scheme.lower() == "basic" and user_ok and password_ok:
        return None
    return _error(not_authorized(), CHALLENGE)


def _answer_single(sim: Simulator, request: Request) -> Response:
    wanted = requested_fields(request.query_params.getlist("fields"), default=None)
    job = sim.find_job(request.path_params["uuid"])
    if job is None:
        raise not_found()
    return JSONResponse(select_fields(sim.job_object(job), wanted, {"_links"}))


def _answer_collection(sim: Simulator, request: Request) -> Response:
    query = request.query_params
    # Without `fields`, ONTAP lists records by uuid and link only.
    wanted = requested_fields(query.getlist("fields"), default=frozenset())
    limit = _int_param(query, "max_records", DEFAULT_MAX_RECORDS, minimum=1)
    offset = _int_param(query, "offset", 0, minimum=0)
    jobs, next_offset = sim.page_jobs(_requested_uuids(query), offset, limit)
    records = [select_fields(sim.job_object(job), wanted, {"_links", "uuid"}) for job in jobs]
    links = {"self": {"href": _href(query)}}
    if next_offset is not None:
        links["next"] = {"href": _href(query, offset=next_offset)}
    return JSONResponse({"records": records, "num_records": len(records), "_links": links})


def _requested_uuids(query: QueryParams) -> list[str] | None:
    """The UUIDs of `uuid=a|b|c`, lower case, first occurrence kept; None when not asked."""
    value = query.get("uuid")
    if value is None:
        return None
    names = (name.strip().lower() for name in value.split("|"))
    return list(dict.fromkeys(name for name in names if name))


def _int_param(query: QueryParams, name: str, default: int, minimum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise OntapError(400, f'Invalid value "{raw}" for "{name}".', "262185", target=name)
    return value


def _href(query: QueryParams, offset: int | None = None) -> str:
    items = [
        (key, value) for key, value in query.multi_items() if offset is None or key != "offset"
    ]
    if offset is not None:
        items.append(("offset", str(offset)))
    encoded = urlencode(items, safe="|,*")
    return f"{JOBS_PATH}?{encoded}" if encoded else JOBS_PATH


async def _drop_connection(request: Request) -> Response:
    """Cut the TCP connection, so the client gets no answer at all."""
    transport = _OPEN_CONNECTIONS.get((request.scope.get("server"), request.scope.get("client")))
    if transport is None:
        raise ConnectionDropped("simulated dropped connection")
    transport.abort()
    # Wait for uvicorn to notice: it then discards whatever is sent and logs nothing.
    async with asyncio.timeout(5):
        while (await request.receive())["type"] != "http.disconnect":
            pass
    return Response(status_code=500)  # never reaches the client


# --- control endpoints -----------------------------------------------------------------------


class _JobBatch(BaseModel):
    jobs: list[JobSpec]


def _control_routes() -> list[Route]:
    return [
        Route("/jobs", _post_jobs, methods=["POST"]),
        Route("/jobs", _delete_jobs, methods=["DELETE"]),
        Route("/jobs/{uuid}/transitions", _get_transitions, methods=["GET"]),
        Route("/faults", _faults, methods=["GET", "PUT", "DELETE"]),
        Route("/stats", _stats, methods=["GET", "DELETE"]),
    ]


class _ControlError(Exception):
    """A refused control request; answered as `{"error": {"message": ..., "details": ...}}`."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


async def _control_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _ControlError)  # registered for that class only
    error: dict[str, Any] = {"message": str(exc)}
    if exc.details is not None:
        error["details"] = exc.details
    return JSONResponse({"error": error}, exc.status)


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError as error:
        raise _ControlError(400, f"body is not JSON: {error}") from error


def _validated(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        details = json.loads(error.json(include_url=False))
        raise _ControlError(400, "invalid body", details) from error


async def _post_jobs(request: Request) -> Response:
    data = await _json_body(request)
    batch = isinstance(data, dict) and "jobs" in data
    specs = _validated(_JobBatch, data).jobs if batch else [_validated(JobSpec, data)]
    try:
        jobs = _sim(request).create_jobs(specs)
    except DuplicateJobError as error:
        raise _ControlError(409, str(error)) from error
    created = [{"uuid": job.uuid, "created_at": job.created_at} for job in jobs]
    return JSONResponse({"jobs": created} if batch else created[0], 201)


async def _delete_jobs(request: Request) -> Response:
    return JSONResponse({"deleted": _sim(request).clear_jobs()})


async def _get_transitions(request: Request) -> Response:
    found = _sim(request).transitions(request.path_params["uuid"])
    if found is None:
        raise _ControlError(404, "no such job")
    job, transitions = found
    return JSONResponse(
        {
            "uuid": job.uuid,
            "created_at": job.created_at,
            "transitions": [{"state": t.state, "at": t.at} for t in transitions],
        }
    )


async def _faults(request: Request) -> Response:
    sim = _sim(request)
    if request.method == "PUT":
        sim.faults = _validated(FaultPlan, await _json_body(request))
    elif request.method == "DELETE":
        sim.faults = FaultPlan()
    return JSONResponse(sim.faults.model_dump(mode="json"))


async def _stats(request: Request) -> Response:
    sim = _sim(request)
    if request.method == "DELETE":
        sim.stats = Stats()
    return JSONResponse(sim.stats.as_json())


# --- serving ---------------------------------------------------------------------------------

# Open connections by (server address, client address), the pair uvicorn puts in each scope:
# ASGI gives an app no handle on its socket, and a drop must cut the socket itself.
_OPEN_CONNECTIONS: dict[tuple[object, object], asyncio.Transport] = {}


class _TrackedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, registering each connection so a fault can drop it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.client is not None:
            _OPEN_CONNECTIONS[(self.server, self.client)] = transport

    def connection_lost(self, exc: Exception | None) -> None:
        _OPEN_CONNECTIONS.pop((self.server, self.client), None)
        super().connection_lost(exc)


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
    host: str, port: int, sim: Simulator, *, on_started: Callable[[int], object] | None = None
) -> None:
    """Serve `sim` on host:port until cancelled, then shut down cleanly and return.

    Port 0 picks a free port; `on_started` receives the port actually bound.
    Raises OSError when the address cannot be bound.
    """
    config = uvicorn.Config(
        create_app(sim),
        host=host,
        port=port,
        http=_TrackedH11Protocol,
        lifespan="off",
        log_level="warning",
        log_config=None,  # leave the process's logging set-up alone
        access_log=False,
        proxy_headers=False,  # scope["client"] must stay the socket's peer (see drops)
        timeout_graceful_shutdown=1,
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
    sim: Simulator, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run `sim` on a real socket for the block; yield its base URL, e.g. http://127.0.0.1:43123."""
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(host, port, sim, on_started=bound.set_result))
    try:
        waiters: set[asyncio.Future[Any]] = {task, bound}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not bound.done():
            await task  # raises why it stopped
            raise RuntimeError("simulator stopped before it started")
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{bound.result()}"
    finally:
        task.cancel()
        await task
