"""HTTP face of the simulator: ONTAP's jobs endpoints, with the control endpoints mounted.

The ONTAP endpoints behave as documented for `GET /api/cluster/jobs[/{uuid}]`, with ONTAP's
query grammar on the collection (see query.py); the control endpoints under `/_sim` (no auth)
create jobs, set faults and settings, and read counts (docs/simulator.md).
"""

from __future__ import annotations

import asyncio
import base64
import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from poller.simulator.cluster import http_date
from poller.simulator.connections import client_left_during, drop_connection
from poller.simulator.control import ControlError, control_error, control_routes, simulator_of
from poller.simulator.faults import Fault
from poller.simulator.jobs import Simulator
from poller.simulator.query import filter_key, parse_collection
from poller.simulator.shapes import (
    JOBS_PATH,
    OntapError,
    not_authorized,
    not_found,
    requested_fields,
    select_fields,
)
from poller.simulator.stats import EndpointKind

# An answer's body and the number of job records in it.
Answer = Callable[[Simulator, Request], tuple[dict[str, Any], int]]

CHALLENGE = {"WWW-Authenticate": 'Basic realm="ONTAP"'}


def create_app(sim: Simulator) -> Starlette:
    """The ASGI app serving `sim`."""
    app = Starlette(
        routes=[
            Route(JOBS_PATH, _collection, methods=["GET"]),
            Route(JOBS_PATH + "/{uuid}", _single, methods=["GET"]),
            Mount("/_sim", routes=control_routes()),
        ],
        exception_handlers={ControlError: control_error},
    )
    app.state.sim = sim
    return app


async def _single(request: Request) -> Response:
    return await _ontap(request, "single", _answer_single)


async def _collection(request: Request) -> Response:
    return await _ontap(request, "collection", _answer_collection)


async def _ontap(request: Request, kind: EndpointKind, answer: Answer) -> Response:
    """Faults first (as a load balancer would), then auth, then the answer; count each."""
    sim = simulator_of(request)
    # Read before any fault, so that a request counts for its user whatever it is answered.
    user = _authenticated_user(sim, request)
    query = filter_key(request.query_params.keys()) if kind == "collection" else ""
    client_app = request.headers.get("x-dot-client-app", "")
    tally = functools.partial(sim.stats.count, kind, user=user, client_app=client_app, query=query)
    fault = sim.decide_fault()
    if fault.latency_s > 0:
        await asyncio.sleep(fault.latency_s)
    if fault.kind == "drop":
        tally("dropped")
        return await drop_connection(request)
    if fault.kind == "hang" and await client_left_during(request, fault.hang_s):
        tally("hung")
        return Response(status_code=504)  # never reaches the client: it has gone
    response, records = _respond(sim, request, fault, user, answer)
    malformed = fault.kind == "malformed" and response.status_code == 200
    if malformed:
        # Cut mid-record, as a proxy that gave up half-way would: the status still says 200.
        # A new response, so that Content-Length is that of the cut body: the connection stays
        # sound and only the JSON is broken.
        cut = response.body[: len(response.body) // 2]
        response = Response(cut, 200, media_type=response.media_type)
        records = 0
    tally("malformed" if malformed else response.status_code, records=records)
    response.headers["Date"] = http_date(sim.cluster_now())
    return response


def _respond(
    sim: Simulator, request: Request, fault: Fault, user: str | None, answer: Answer
) -> tuple[Response, int]:
    refused = _fault_response(fault)
    if refused is not None:
        return refused, 0
    if user is None:
        return _error(not_authorized(), CHALLENGE), 0
    try:
        body, records = answer(sim, request)
    except OntapError as error:
        return _error(error), 0
    return JSONResponse(body), records


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


def _authenticated_user(sim: Simulator, request: Request) -> str | None:
    """The user whose basic-auth credentials the request carries, or None."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 inside
        return None
    return sim.authenticate(username, password)


def _answer_single(sim: Simulator, request: Request) -> tuple[dict[str, Any], int]:
    wanted = requested_fields(request.query_params.getlist("fields"), default=None)
    job = sim.find_job(request.path_params["uuid"])
    if job is None:
        raise not_found()
    return select_fields(sim.job_object(job), wanted, {"_links"}), 1


def _answer_collection(sim: Simulator, request: Request) -> tuple[dict[str, Any], int]:
    params = request.query_params
    config = sim.config
    query = parse_collection(
        params.multi_items(), config.zone, refuse_filters=config.refuse_filters
    )
    records, next_offset = sim.list_jobs(query)
    links = {"self": {"href": _href(params)}}
    if next_offset is not None:
        links["next"] = {"href": _href(params, offset=next_offset)}
    return {"records": records, "num_records": len(records), "_links": links}, len(records)


def _href(params: QueryParams, offset: int | None = None) -> str:
    """The collection's link with the same query (filters and all), at another offset."""
    items = [
        (key, value) for key, value in params.multi_items() if offset is None or key != "offset"
    ]
    if offset is not None:
        items.append(("offset", str(offset)))
    encoded = urlencode(items, safe="|,*!:")
    return f"{JOBS_PATH}?{encoded}" if encoded else JOBS_PATH
