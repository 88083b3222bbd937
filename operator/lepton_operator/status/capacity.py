"""Free GPUs on the cluster's nodes, as the scheduler would count them, as pure functions.

An elastic TrainingJob is sized to what the cluster can actually give: how many
of its workers (each needing ``gpu.count`` GPUs on one node) fit on the nodes
its pods may land on. A node qualifies when it is Ready and schedulable, its
labels match the worker's node selector, and the worker tolerates its
NoSchedule/NoExecute taints. A node's free GPUs are its allocatable
``nvidia.com/gpu`` minus the GPU *limits* of the pods bound to it that have not
finished (device-plugin resources are requested through limits); the job's own
pods are passed as ``ignore`` so the GPUs it already holds count as its own.

This is an estimate made between scheduler decisions, so it can be briefly
wrong; the job reacts by resizing again (its pods' PodScheduled condition tells).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def pod_gpus(pod: Mapping[str, Any]) -> int:
    """GPUs a pod holds (the sum of its containers' ``nvidia.com/gpu`` limits)."""
    spec = pod.get("spec") or {}
    return sum(
        _quantity(((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE, 0))
        for c in spec.get("containers") or []
    )


def _ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _tolerated(taint: Mapping[str, Any], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration.get("key") == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def eligible(node: Mapping[str, Any], selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a worker with ``selector`` and ``tolerations`` may be placed on ``node``."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    if (node.get("spec") or {}).get("unschedulable") or not _ready(node):
        return False
    if any(labels.get(key) != value for key, value in selector.items()):
        return False
    return all(_tolerated(taint, tolerations) for taint in (node.get("spec") or {}).get("taints") or [])


def free_gpus(nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]],
              ignore: Collection[str] = ()) -> dict[str, int]:  # fmt: skip
    """Free GPUs per node name; pods named in ``ignore`` (``namespace/name``) count as free."""
    used: dict[str, int] = {}
    for pod in pods:
        metadata = pod.get("metadata") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in ("Succeeded", "Failed"):
            continue
        if f"{metadata.get('namespace')}/{metadata.get('name')}" in ignore:
            continue
        used[node] = used.get(node, 0) + pod_gpus(pod)
    free: dict[str, int] = {}
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name", ""))
        allocatable = _quantity(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0))
        free[name] = max(0, allocatable - used.get(name, 0))
    return free


def workers_that_fit(nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], gpus_per_worker: int,
                     selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]],
                     ignore: Collection[str] = ()) -> int:  # fmt: skip
    """How many workers of ``gpus_per_worker`` GPUs the eligible nodes can host now."""
    free = free_gpus(nodes, pods, ignore)
    return sum(
        free.get(str((node.get("metadata") or {}).get("name", "")), 0) // gpus_per_worker
        for node in nodes
        if eligible(node, selector, tolerations)
    )
