"""The autoscaling decision: observed signal + history -> desired replicas, reason, direction.

Pure and deterministic, so it is tested on replayed traces. The base is the
Kubernetes HPA algorithm (``desired = ceil(ready * value / target)``, no change
while ``value / target`` is within the 0.1 tolerance, per-direction
stabilisation over the history of recommendations), with the differences that
make it react within one loop without flapping:

- **Capacity in flight.** Replicas that exist but are not Ready yet count as
  capacity: while the proportional rule asks for no more than ``replicas``
  (ready + starting), the policy holds instead of adding more pods for load the
  starting ones will take. HPA instead re-adds them on each loop as the signal
  stays high.
- **Unknown is not zero.** A missing or empty metric (``value is None``) holds
  the current count and records nothing in the history; it never reads as an
  idle service (KEDA's trap of scaling to zero on a failed query).
- **Zero.** The proportional rule never goes below one replica. Zero comes only
  from idleness: no requests for ``scale_to_zero_after_seconds`` (with
  ``min_replicas == 0``). From zero, any pending demand asks for one replica at
  once, bypassing stabilisation (there is nothing to stabilise at zero).
- **Bounds** ``[min_replicas, max_replicas]`` are applied last and say so in
  the reason.

:class:`PolicyState` is what the loop keeps per service between decisions
(recommendation history and the last time requests were seen); a decision
returns the new state, never mutates it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from lepton_operator.api.inference import AutoscalingSpec

Direction = Literal["up", "down", "none"]
DIRECTIONS: tuple[Direction, ...] = ("up", "down", "none")

#: HPA's default tolerance: no change while value/target is within 10 %.
TOLERANCE = 0.1

# Reasons, as they appear in events, status.autoscaling.lastDecision and metrics.
ABOVE_TARGET = "AboveTarget"
BELOW_TARGET = "BelowTarget"
WITHIN_TOLERANCE = "WithinTolerance"
CAPACITY_IN_FLIGHT = "CapacityInFlight"
STABILIZING = "Stabilizing"
SIGNAL_UNKNOWN = "SignalUnknown"
IDLE = "Idle"
PENDING_DEMAND = "PendingDemand"
BELOW_MIN = "BelowMin"
ABOVE_MAX = "AboveMax"
REASONS = (
    ABOVE_TARGET, BELOW_TARGET, WITHIN_TOLERANCE, CAPACITY_IN_FLIGHT, STABILIZING,
    SIGNAL_UNKNOWN, IDLE, PENDING_DEMAND, BELOW_MIN, ABOVE_MAX,
)  # fmt: skip


@dataclass(frozen=True)
class PolicyConfig:
    """The knobs of one service's policy (from ``spec.autoscaling``)."""

    min_replicas: int
    max_replicas: int
    target: float
    scale_up_stabilization_seconds: float = 0.0
    scale_down_stabilization_seconds: float = 300.0
    scale_to_zero_after_seconds: float | None = None
    tolerance: float = TOLERANCE

    @classmethod
    def from_spec(cls, spec: AutoscalingSpec) -> PolicyConfig:
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            target=spec.target,
            scale_up_stabilization_seconds=spec.scale_up_stabilization_seconds,
            scale_down_stabilization_seconds=spec.scale_down_stabilization_seconds,
            scale_to_zero_after_seconds=spec.scale_to_zero_after_seconds,
        )


@dataclass(frozen=True)
class Observation:
    """What one loop saw for one service.

    ``value`` is the signal per ready replica (``None``: unknown). ``demand`` is
    the pending requests in total, used to scale from zero (``None``: unknown).
    ``active`` says whether requests arrived during the window (``None``: unknown).
    """

    now: float
    replicas: int
    ready: int
    value: float | None
    demand: float | None = None
    active: bool | None = None


@dataclass(frozen=True)
class PolicyState:
    """Per-service memory between decisions: recommendations ``(time, replicas)`` and last activity."""

    history: tuple[tuple[float, int], ...] = ()
    last_active: float | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of one loop: replicas to set, why, which way, and the state to keep."""

    desired: int
    reason: str
    direction: Direction
    state: PolicyState = field(default_factory=PolicyState)


def _direction(current: int, desired: int) -> Direction:
    return "up" if desired > current else "down" if desired < current else "none"


def _bounded(config: PolicyConfig, desired: int, reason: str) -> tuple[int, str]:
    if desired < config.min_replicas:
        return config.min_replicas, BELOW_MIN
    if desired > config.max_replicas:
        return config.max_replicas, ABOVE_MAX
    return desired, reason


def _proportional(config: PolicyConfig, observed: Observation, value: float) -> tuple[int, str]:
    """HPA's rule on the ready replicas, with starting replicas counted as capacity in flight."""
    ratio = value / config.target
    if abs(ratio - 1.0) <= config.tolerance:
        return observed.replicas, WITHIN_TOLERANCE
    raw = max(1, math.ceil(observed.ready * ratio))
    if raw > observed.replicas:
        return raw, ABOVE_TARGET
    if ratio > 1.0:  # wants more than ready, but the starting replicas already cover it
        return observed.replicas, CAPACITY_IN_FLIGHT
    if observed.ready < observed.replicas:  # never scale down below pods still starting
        return observed.replicas, CAPACITY_IN_FLIGHT
    return raw, BELOW_TARGET if raw < observed.replicas else WITHIN_TOLERANCE


def _stabilized(config: PolicyConfig, history: tuple[tuple[float, int], ...], now: float, current: int) -> int:
    """HPA's per-direction stabilisation: up to the lowest recent, down to the highest recent recommendation."""
    up_since = now - config.scale_up_stabilization_seconds
    down_since = now - config.scale_down_stabilization_seconds
    up = min(replicas for at, replicas in history if at >= up_since)
    down = max(replicas for at, replicas in history if at >= down_since)
    if current < up:
        return up
    if current > down:
        return down
    return current


def decide(config: PolicyConfig, observed: Observation, state: PolicyState = PolicyState()) -> Decision:
    """One decision for one service; see the module docstring."""
    now, current = observed.now, observed.replicas
    busy = observed.active or (observed.demand or 0) > 0
    last_active = now if busy or state.last_active is None else state.last_active
    keep = max(config.scale_up_stabilization_seconds, config.scale_down_stabilization_seconds)
    history = tuple(item for item in state.history if item[0] >= now - keep)

    def done(desired: int, reason: str, recommended: int | None = None) -> Decision:
        recorded = history if recommended is None else (*history, (now, recommended))
        new_state = PolicyState(recorded, last_active)
        return Decision(desired, reason, _direction(current, desired), new_state)

    if current == 0:
        if observed.demand is None and observed.active is None:
            return done(*_bounded(config, 0, SIGNAL_UNKNOWN))
        if busy:
            wanted, reason = _bounded(config, 1, PENDING_DEMAND)
            return done(wanted, reason, wanted)
        return done(*_bounded(config, 0, IDLE))

    idle_after = config.scale_to_zero_after_seconds
    if (
        idle_after is not None
        and config.min_replicas == 0
        and observed.active is False
        and not busy
        and now - last_active >= idle_after
    ):
        return done(0, IDLE, 0)

    if observed.value is None or observed.ready == 0:
        return done(*_bounded(config, current, SIGNAL_UNKNOWN))

    recommended, reason = _proportional(config, observed, observed.value)
    recommended, reason = _bounded(config, recommended, reason)
    recorded = (*history, (now, recommended))
    desired = _stabilized(config, recorded, now, current)
    if desired != recommended and reason in (ABOVE_TARGET, BELOW_TARGET):
        reason = STABILIZING
    desired, reason = _bounded(config, desired, reason)
    return Decision(desired, reason, _direction(current, desired), PolicyState(recorded, last_active))
