"""The simulator's own control endpoints under `/_sim` (no auth): jobs, faults, settings, counts.

They are documented in docs/simulator.md. A refused request gets
`{"error": {"message": ..., "details": [...]}}`, where `details` lists validation errors.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from poller.simulator.cluster import ClusterConfig
from poller.simulator.faults import FaultPlan
from poller.simulator.jobs import DuplicateJobError, JobSpec, Simulator
from poller.simulator.stats import Stats

_M = TypeVar("_M", bound=BaseModel)


def simulator_of(request: Request) -> Simulator:
    """The simulator the app serving `request` was made for."""
    sim: Simulator = request.app.state.sim
    return sim


def control_routes() -> list[Route]:
    """The routes to mount under `/_sim`."""
    return [
        Route("/jobs", _post_jobs, methods=["POST"]),
        Route("/jobs", _delete_jobs, methods=["DELETE"]),
        Route("/jobs/{uuid}/transitions", _get_transitions, methods=["GET"]),
        Route("/faults", _faults, methods=["GET", "PUT", "DELETE"]),
        Route("/config", _config, methods=["GET", "PUT", "PATCH", "DELETE"]),
        Route("/stats", _stats, methods=["GET", "DELETE"]),
    ]


class ControlError(Exception):
    """A refused control request; answered as `{"error": {"message": ..., "details": ...}}`."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


async def control_error(request: Request, exc: Exception) -> Response:
    """The answer to a ControlError."""
    assert isinstance(exc, ControlError)  # registered for that class only
    error: dict[str, Any] = {"message": str(exc)}
    if exc.details is not None:
        error["details"] = exc.details
    return JSONResponse({"error": error}, exc.status)


class _JobBatch(BaseModel):
    jobs: list[JobSpec]


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except json.JSONDecodeError as error:
        raise ControlError(400, f"body is not JSON: {error}") from error


def _validated(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _refused(error) from error


def _refused(error: ValidationError) -> ControlError:
    return ControlError(400, "invalid body", json.loads(error.json(include_url=False)))


async def _post_jobs(request: Request) -> Response:
    data = await _json_body(request)
    batch = isinstance(data, dict) and "jobs" in data
    specs = _validated(_JobBatch, data).jobs if batch else [_validated(JobSpec, data)]
    try:
        jobs = simulator_of(request).create_jobs(specs)
    except DuplicateJobError as error:
        raise ControlError(409, str(error)) from error
    created = [{"uuid": job.uuid, "created_at": job.created_at} for job in jobs]
    return JSONResponse({"jobs": created} if batch else created[0], 201)


async def _delete_jobs(request: Request) -> Response:
    return JSONResponse({"deleted": simulator_of(request).clear_jobs()})


async def _get_transitions(request: Request) -> Response:
    found = simulator_of(request).transitions(request.path_params["uuid"])
    if found is None:
        raise ControlError(404, "no such job")
    job, transitions = found
    return JSONResponse(
        {
            "uuid": job.uuid,
            "created_at": job.created_at,
            "transitions": [{"state": t.state, "at": t.at} for t in transitions],
        }
    )


async def _faults(request: Request) -> Response:
    sim = simulator_of(request)
    if request.method == "PUT":
        sim.faults = _validated(FaultPlan, await _json_body(request))
    elif request.method == "DELETE":
        sim.faults = FaultPlan()
    return JSONResponse(sim.faults.model_dump(mode="json"))


async def _config(request: Request) -> Response:
    """PUT replaces the settings (left-out keys take their defaults), PATCH changes some."""
    sim = simulator_of(request)
    if request.method == "PUT":
        sim.config = _validated(ClusterConfig, await _json_body(request))
    elif request.method == "PATCH":
        changes = await _json_body(request)
        if not isinstance(changes, dict):
            raise ControlError(400, "body must be a JSON object")
        try:
            sim.configure(**changes)
        except ValidationError as error:
            raise _refused(error) from error
    elif request.method == "DELETE":
        sim.config = ClusterConfig()
    return JSONResponse(sim.config.model_dump(mode="json"))


async def _stats(request: Request) -> Response:
    sim = simulator_of(request)
    if request.method == "DELETE":
        sim.stats = Stats()
    return JSONResponse(sim.stats.as_json())
