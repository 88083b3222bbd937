"""An InferenceService's status from what exists: its Deployment, or why there is none yet.

Pure: (spec, observed Deployment or the reason the model is not available,
existing status, now) -> a merge patch of ``status``. Recomputed on every pass,
never one-way: a TrainingJob that failed and was rerun brings the service back.

Conditions (kstatus plus one of our own):

- ``ModelAvailable``: the model source can be staged (False while a referenced
  TrainingJob has not Succeeded, with its phase in the message).
- ``Ready``: the service answers: at least one replica has the model ready, or
  it is scaled to zero on purpose. ``Reconciling``: replicas are still being
  added, replaced or started. ``Stalled``: nothing will progress without a
  change (the Deployment's progress deadline passed; the source failed).

Phase: Pending (no model yet), Progressing, Ready (all desired replicas ready),
ScaledToZero, Failed (stalled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lepton_operator.api.inference import InferenceServiceStatus
from lepton_operator.status import conditions as cond
from lepton_operator.status.validation import VALID

MODEL_AVAILABLE = "ModelAvailable"


@dataclass(frozen=True)
class Unavailable:
    """Why the model cannot be staged yet: reason, message, and whether waiting can help."""

    reason: str
    message: str
    stalled: bool = False


def _counts(deployment: Mapping[str, Any] | None) -> tuple[int, int, int]:
    status = (deployment or {}).get("status") or {}
    return int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0), int(status.get("updatedReplicas") or 0)


def _deadline_exceeded(deployment: Mapping[str, Any] | None) -> str | None:
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return str(condition.get("message") or "the Deployment exceeded its progress deadline")
    return None


def _rolled_out(deployment: Mapping[str, Any], desired: int) -> bool:
    metadata, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    current = int(status.get("observedGeneration") or 0) >= int(metadata.get("generation") or 0)
    replicas, ready, updated = _counts(deployment)
    return current and replicas == desired and ready == desired and updated == desired


def service_status(
    generation: int,
    *,
    desired: int,
    deployment: Mapping[str, Any] | None,
    unavailable: Unavailable | None,
    selector: str,
    url: str,
    existing: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status fields the reconciler owns (``autoscaling`` belongs to the autoscaler)."""
    replicas, ready, _ = _counts(deployment)
    stuck = _deadline_exceeded(deployment)
    if unavailable is not None:
        model = cond.make(MODEL_AVAILABLE, False, unavailable.reason, unavailable.message, generation)
        phase = "Failed" if unavailable.stalled else "Pending"
        serving = cond.ready(False, unavailable.reason, unavailable.message, generation)
        progress = cond.reconciling(not unavailable.stalled, unavailable.reason, unavailable.message, generation)
        stall = cond.stalled(unavailable.stalled, unavailable.reason, unavailable.message, generation)
    else:
        model = cond.make(MODEL_AVAILABLE, True, "SourceResolved", "the model source can be staged", generation)
        done = deployment is not None and _rolled_out(deployment, desired)
        if desired == 0 and replicas == 0:
            phase, reason, message = "ScaledToZero", "ScaledToZero", "no replicas: scaled to zero"
        elif done:
            phase, reason, message = "Ready", "ModelReady", f"{ready}/{desired} replicas have the model ready"
        else:
            phase, reason = "Progressing", "ReplicasStarting"
            message = f"{ready}/{desired} replicas have the model ready"
        if stuck is not None:
            phase, reason, message = "Failed", "ProgressDeadlineExceeded", stuck
        answering = phase == "ScaledToZero" or ready > 0
        serving = cond.ready(answering, reason if not answering or phase != "Progressing" else "Serving", message, generation)
        progress = cond.reconciling(phase == "Progressing", reason, message, generation)
        stall = cond.stalled(stuck is not None, reason if stuck else VALID, message if stuck else "not stalled", generation)
    validated = cond.make(cond.VALIDATED, True, VALID, "spec is valid", generation)
    current = cond.parse_conditions((existing or {}).get("conditions"))
    merged = cond.set_conditions(current, [validated, model, serving, progress, stall], cond.format_time(now))
    status = InferenceServiceStatus(
        phase=phase,
        observed_generation=generation,
        conditions=merged,
        replicas=replicas,
        ready_replicas=ready,
        desired_replicas=desired,
        selector=selector,
        url=url,
    )
    return status.to_wire()
