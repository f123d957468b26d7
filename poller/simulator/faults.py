"""What goes wrong in the simulator, decided per request.

The plan is data (JSON in, JSON out through the control endpoint); the decisions are pure
functions of the plan and a random source, so a seeded plan replays the same faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, model_validator

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
FaultKind = Literal["none", "override", "drop", "hang", "throttle", "error", "malformed"]

# ONTAP answers both when it sheds load; clients must honour Retry-After on either.
THROTTLE_STATUSES = (429, 503)


class FaultPlan(BaseModel):
    """Which faults the ONTAP endpoints inject, and how often (rates are per request)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: Rate = 0.0
    error_status: int = Field(default=500, ge=400, le=599)
    throttle_rate: Rate = 0.0
    retry_after_s: int = Field(default=1, ge=0)
    drop_rate: Rate = 0.0
    hang_rate: Rate = 0.0
    hang_s: float = Field(default=30.0, gt=0.0, le=3600.0, allow_inf_nan=False)
    malformed_rate: Rate = 0.0
    latency_ms: tuple[NonNegativeFloat, NonNegativeFloat] = (0.0, 0.0)
    status_override: int | None = Field(default=None, ge=400, le=599)
    seed: int | None = None

    @model_validator(mode="after")
    def _latency_is_a_range(self) -> Self:
        low, high = self.latency_ms
        if low > high:
            raise ValueError("latency_ms must be [min, max] with min <= max")
        return self


@dataclass(frozen=True)
class Fault:
    """The decision for one request: an optional delay, then what to answer."""

    kind: FaultKind
    latency_s: float = 0.0
    status: int | None = None
    retry_after_s: int | None = None
    hang_s: float = 0.0


class FaultInjector:
    """Turns a plan into per-request decisions, drawn from seeded random sources."""

    def __init__(self, plan: FaultPlan | None = None, rng: random.Random | None = None) -> None:
        self._plan = plan if plan is not None else FaultPlan()
        self._rng = rng if rng is not None else random.Random(self._plan.seed)
        # The later kinds draw from a stream of their own, so that a seeded plan of the first
        # kinds replays exactly the faults it did before they existed.
        seed = self._plan.seed
        self._later_rng = random.Random(None if seed is None else f"{seed}/later-kinds")
        self._throttled = 0

    @property
    def plan(self) -> FaultPlan:
        """The plan in force."""
        return self._plan

    def decide(self) -> Fault:  # noqa: PLR0911 - one return per kind, in the documented order
        """Decide the fate of the next request."""
        plan = self._plan
        # Draw every number on every request, so a seed replays the same sequence
        # whatever the outcome of the earlier draws.
        latency_s = self._rng.uniform(*plan.latency_ms) / 1000.0
        drop, throttle, error = (self._rng.random() for _ in range(3))
        hang, malformed = (self._later_rng.random() for _ in range(2))
        if plan.status_override is not None:
            return Fault("override", latency_s, status=plan.status_override)
        if drop < plan.drop_rate:
            return Fault("drop", latency_s)
        if hang < plan.hang_rate:
            return Fault("hang", latency_s, hang_s=plan.hang_s)
        if throttle < plan.throttle_rate:
            return Fault("throttle", latency_s, self._next_throttle_status(), plan.retry_after_s)
        if error < plan.error_rate:
            return Fault("error", latency_s, status=plan.error_status)
        if malformed < plan.malformed_rate:
            return Fault("malformed", latency_s)
        return Fault("none", latency_s)

    def _next_throttle_status(self) -> int:
        # Alternating rather than random: a client is then sure to meet both within two throttles.
        status = THROTTLE_STATUSES[self._throttled % len(THROTTLE_STATUSES)]
        self._throttled += 1
        return status
