"""Worker pods of a TrainingJob as the API returns them, for the tests of ``status.training*``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def pod(index: int, group: int = 0, phase: str = "Running", *, ready: bool = True, node: str | None = "n1",
        conditions: list[dict[str, Any]] | None = None, terminated: dict[str, Any] | None = None,
        deleting: bool = False, reason: str | None = None) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"phase": phase, "conditions": list(conditions or [])}
    if phase == "Running":
        status["conditions"].append({"type": "Ready", "status": "True" if ready else "False"})
    if terminated is not None:
        status["containerStatuses"] = [{"name": "worker", "state": {"terminated": terminated}}]
    if reason:
        status["reason"] = reason
    metadata: dict[str, Any] = {
        "name": f"job-worker-{index}-g{group}",
        "labels": {"lepton.ai/worker-index": str(index), "lepton.ai/group": str(group)},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-02T03:04:00Z"
    return {"metadata": metadata, "spec": {"nodeName": node} if node else {}, "status": status}


def failed(index: int, code: int, group: int = 0, reason: str = "Error", message: str = "") -> dict[str, Any]:
    return pod(index, group, "Failed", terminated={"exitCode": code, "reason": reason, "message": message})


def live_pod(index: int, uid: str, group: int = 0, **fields: Any) -> dict[str, Any]:
    found = pod(index, group, **fields)
    found["metadata"]["uid"] = uid
    return found
