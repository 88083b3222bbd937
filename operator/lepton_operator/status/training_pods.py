"""What one worker pod of a TrainingJob says, read from the pod alone, as pure functions.

A TrainingJob's decision (``status.training``) and its failure classes
(``status.training_failures``) ask the same small questions of every worker
pod: which group generation and worker index its labels give
(``lepton.ai/group``, ``lepton.ai/worker-index``; ``None`` when a label is
missing or odd, so a stray pod belongs to no group), whether it is terminating,
running, ready or succeeded, when it was deleted, and why it waits: the
scheduler's own message (``0/4 nodes are available: Insufficient
nvidia.com/gpu``) or the kubelet's reason for a container that cannot start
(an image that cannot be pulled, a config or security context it refuses).
Those answers are here, once, each from the pod as the API returns it: no
other object, no clock.

A terminating pod is never running: it is on its way out, whatever its phase.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from lepton_operator.api.training import WORKER_GROUP_LABEL, WORKER_INDEX_LABEL
from lepton_operator.status.capacity import UNSCHEDULABLE
from lepton_operator.status.conditions import parse_time

#: Waiting reasons of a container that cannot start (image, config or security context): it waits forever.
_BLOCKED_WAITING = {
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "RunContainerError",
}


def meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """A pod's ``metadata`` (empty when it has none)."""
    return pod.get("metadata") or {}


def pod_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """A pod's ``status`` (empty when it has none)."""
    return pod.get("status") or {}


def _int_label(pod: Mapping[str, Any], label: str) -> int | None:
    value = str((meta(pod).get("labels") or {}).get(label, ""))
    return int(value) if value.isdigit() else None


def pod_group(pod: Mapping[str, Any]) -> int | None:
    """The group generation of a worker pod (``None`` when the label is missing or odd)."""
    return _int_label(pod, WORKER_GROUP_LABEL)


def pod_index(pod: Mapping[str, Any]) -> int | None:
    """The worker index of a pod (``None`` when the label is missing or odd)."""
    return _int_label(pod, WORKER_INDEX_LABEL)


def pod_name(pod: Mapping[str, Any]) -> str:
    """A pod's name."""
    return str(meta(pod).get("name"))


def terminating(pod: Mapping[str, Any]) -> bool:
    return bool(meta(pod).get("deletionTimestamp"))


def pod_condition(pod: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    """The pod's condition of type ``ctype``, else ``None``."""
    for item in pod_status(pod).get("conditions") or []:
        if item.get("type") == ctype:
            found: Mapping[str, Any] = item
            return found
    return None


def terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``terminated`` state of the pod's first container that has one, else ``None``."""
    for container in pod_status(pod).get("containerStatuses") or []:
        state = container.get("state") or {}
        if state.get("terminated"):
            terminated: Mapping[str, Any] = state["terminated"]
            return terminated
    return None


def running(pod: Mapping[str, Any]) -> bool:
    return pod_status(pod).get("phase") == "Running" and not terminating(pod)


def ready(pod: Mapping[str, Any]) -> bool:
    found = pod_condition(pod, "Ready")
    return running(pod) and found is not None and found.get("status") == "True"


def succeeded(pod: Mapping[str, Any]) -> bool:
    return pod_status(pod).get("phase") == "Succeeded"


def unschedulable_message(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message when it cannot place ``pod``, else ``None``."""
    found = pod_condition(pod, "PodScheduled")
    if found is not None and found.get("status") == "False" and found.get("reason") == UNSCHEDULABLE:
        return str(found.get("message") or "the scheduler cannot place the worker")
    return None


def blocked_message(pod: Mapping[str, Any]) -> str | None:
    """Why a container of ``pod`` cannot start (the kubelet's waiting reason and message), else ``None``."""
    status = pod_status(pod)
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _BLOCKED_WAITING:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f"worker {meta(pod).get('name', '?')} {waiting['reason']}{detail}"
    return None


def deleted_at(pod: Mapping[str, Any]) -> datetime | None:
    """When a pod was deleted: its ``deletionTimestamp`` is that moment plus the grace period."""
    found = meta(pod)
    due = parse_time(found.get("deletionTimestamp"))
    return None if due is None else due - timedelta(seconds=int(found.get("deletionGracePeriodSeconds") or 0))
