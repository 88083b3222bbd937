"""InferenceService status from its Deployment, or from why the model is not available."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lepton_operator.status.inference import Unavailable, service_status

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def deployment(replicas: int, ready: int, updated: int | None = None, *, stuck: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": 2, "replicas": replicas, "readyReplicas": ready}
    status["updatedReplicas"] = replicas if updated is None else updated
    if stuck:
        status["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                 "message": "ReplicaSet serve-abc has timed out progressing."}]
    return {"metadata": {"generation": 2}, "status": status}


def status(desired: int, observed: dict[str, Any] | None, unavailable: Unavailable | None = None,
           existing: dict[str, Any] | None = None) -> dict[str, Any]:
    return service_status(3, desired=desired, deployment=observed, unavailable=unavailable,
                          selector="a=b", url="http://serve.ns.svc:8000/v2/models/m", existing=existing, now=NOW)


def conditions(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


def test_all_replicas_ready_is_ready() -> None:
    result = status(2, deployment(2, 2))
    assert result["phase"] == "Ready"
    assert (result["replicas"], result["readyReplicas"], result["desiredReplicas"]) == (2, 2, 2)
    assert result["selector"] == "a=b" and result["url"].endswith("/v2/models/m")
    assert result["observedGeneration"] == 3
    found = conditions(result)
    assert found["Ready"] == ("True", "ModelReady") and found["Reconciling"][0] == "False"
    assert found["ModelAvailable"][0] == "True" and found["Validated"][0] == "True"


def test_scaling_up_serves_while_reconciling() -> None:
    result = status(4, deployment(4, 2))
    assert result["phase"] == "Progressing"
    found = conditions(result)
    assert found["Ready"] == ("True", "Serving") and found["Reconciling"] == ("True", "ReplicasStarting")


def test_nothing_ready_yet_is_not_ready() -> None:
    assert conditions(status(1, None))["Ready"] == ("False", "ReplicasStarting")
    assert conditions(status(1, deployment(1, 0)))["Ready"][0] == "False"


def test_scaled_to_zero() -> None:
    result = status(0, deployment(0, 0))
    assert result["phase"] == "ScaledToZero" and conditions(result)["Ready"] == ("True", "ScaledToZero")


def test_progress_deadline_is_stalled() -> None:
    result = status(1, deployment(1, 0, stuck=True))
    assert result["phase"] == "Failed"
    assert conditions(result)["Stalled"] == ("True", "ProgressDeadlineExceeded")


def test_waiting_for_the_model_and_failed_source() -> None:
    waiting = status(1, None, Unavailable("WaitingForTrainingJob", "TrainingJob 'train' is Running"))
    assert waiting["phase"] == "Pending"
    found = conditions(waiting)
    assert found["ModelAvailable"] == ("False", "WaitingForTrainingJob") and found["Stalled"][0] == "False"
    failed = status(1, None, Unavailable("TrainingJobFailed", "failed", stalled=True))
    assert failed["phase"] == "Failed" and conditions(failed)["Stalled"] == ("True", "TrainingJobFailed")


def test_transition_time_kept_while_status_unchanged() -> None:
    first = status(4, deployment(4, 1))
    later = service_status(3, desired=4, deployment=deployment(4, 3), unavailable=None, selector="a=b", url="u",
                           existing=first, now=NOW.replace(hour=9))
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times["Ready"] == "2026-01-02T03:04:05Z"
