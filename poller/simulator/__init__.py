"""A simulated NetApp ONTAP jobs REST API, for tests, benchmarks, the demo and compose.

`Simulator` holds the jobs and their timelines, `create_app` serves it as an ASGI app,
`serve` runs it with uvicorn, and `running_simulator` runs it for the length of a block.
Control endpoints are documented in docs/simulator.md.
"""

from poller.simulator.app import ConnectionDropped, create_app, running_simulator, serve
from poller.simulator.faults import FaultPlan
from poller.simulator.jobs import FINAL_STATES, DuplicateJobError, Simulator, Step

__all__ = [
    "FINAL_STATES",
    "ConnectionDropped",
    "DuplicateJobError",
    "FaultPlan",
    "Simulator",
    "Step",
    "create_app",
    "running_simulator",
    "serve",
]
