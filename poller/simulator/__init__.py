"""A simulated NetApp ONTAP jobs REST API, for tests, benchmarks, the demo and compose.

`Simulator` holds the jobs and their timelines, `create_app` serves it as an ASGI app,
`serve` runs it with uvicorn (HTTP or HTTPS), and `running_simulator` runs it for the length
of a block. Control endpoints are documented in docs/simulator.md.
"""

from poller.simulator.app import create_app
from poller.simulator.cluster import ClusterConfig
from poller.simulator.connections import ConnectionDropped
from poller.simulator.faults import FaultPlan
from poller.simulator.jobs import FINAL_STATES, DuplicateJobError, Simulator, Step
from poller.simulator.serving import running_simulator, serve
from poller.simulator.stats import Stats, UserStats

__all__ = [
    "FINAL_STATES",
    "ClusterConfig",
    "ConnectionDropped",
    "DuplicateJobError",
    "FaultPlan",
    "Simulator",
    "Stats",
    "Step",
    "UserStats",
    "create_app",
    "running_simulator",
    "serve",
]
