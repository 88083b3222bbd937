"""The ``ScalingActive`` condition of an autoscaled InferenceService, as pure functions.

The HPA reports whether it can compute a scale (``ScalingActive``, False with
``FailedGetPodsMetric`` and the error while its metrics API fails). Ours says
the same, so that an outage of Prometheus is visible where people and alerts
look (``kubectl wait --for=condition=ScalingActive``, Argo CD's health, the
dashboards) and not only in ``status.autoscaling.lastDecision``:

- ``True`` while the signal is known; the reason is the last decision's
  (``AboveTarget``, ``WithinTolerance``, ...).
- ``False`` with reason ``SignalUnknown`` while it is not: the message says
  why (Prometheus refused or timed out, with its error; no sample yet; no
  ready replica to divide by) and how many replicas are held. Unknown is never
  read as idle: the policy holds the count (``scaling.policy``).

The autoscaler writes the condition, the reconciler owns the others; each
keeps the conditions of the other type as it finds them (``conditions``
semantics), and the autoscaler's write carries the object's resourceVersion so
that it never overwrites a newer reconciler write. :func:`merged` returns
``None`` when the stored condition already says the same, so a steady state
costs no write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lepton_operator.api.common import Condition
from lepton_operator.status import conditions as cond

SCALING_ACTIVE = "ScalingActive"
SIGNAL_UNKNOWN = "SignalUnknown"


def scaling_active(reason: str, unknown_because: str | None, replicas: int, generation: int) -> Condition:
    """The condition for one decision: ``reason`` (the policy's), and why the signal is unknown, if it is."""
    if unknown_because is not None:
        message = f"holding {replicas} replica{'s' if replicas != 1 else ''}: the signal is unknown ({unknown_because})"
        return cond.make(SCALING_ACTIVE, False, SIGNAL_UNKNOWN, message, generation)
    return cond.make(SCALING_ACTIVE, True, reason, f"scaling on the signal; last decision: {reason}", generation)


def merged(stored: Sequence[Mapping[str, Any]] | None, new: Condition, now: str) -> list[dict[str, Any]] | None:
    """``stored`` (the object's ``status.conditions``) with ``new`` set, or ``None`` when nothing would change.

    A change is a new status, reason or message, or a generation the stored one does not carry.
    """
    current = cond.parse_conditions(stored)
    old = cond.find(current, new.type)
    if old is not None and (old.status, old.reason, old.message, old.observed_generation) == (
        new.status, new.reason, new.message, new.observed_generation
    ):  # fmt: skip
        return None
    return cond.to_wire(cond.set_condition(current, new, now))
