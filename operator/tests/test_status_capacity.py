"""Free GPUs per node and how many workers fit, as the scheduler would count them."""

from __future__ import annotations

from typing import Any

from lepton_operator.status import capacity

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
H100 = {"nvidia.com/gpu.product": "H100"}


def node(name: str, gpus: int, *, labels: dict[str, str] | None = None, ready: str = "True",
         taints: list[dict[str, str]] | None = None, unschedulable: bool = False) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name, "labels": {**H100, **(labels or {})}},
        "spec": {"taints": taints if taints is not None else [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
                 "unschedulable": unschedulable},  # fmt: skip
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "conditions": [{"type": "Ready", "status": ready}]},
    }


def pod(name: str, node_name: str, gpus: int, phase: str = "Running", namespace: str = "ml") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus}}}]},
            "status": {"phase": phase}}  # fmt: skip


def test_free_gpus_subtract_unfinished_pods_except_the_jobs_own() -> None:
    nodes = [node("a", 8), node("b", 8)]
    pods = [pod("x", "a", 4), pod("done", "a", 4, phase="Succeeded"), pod("mine", "b", 8), pod("pending", "", 8)]
    assert capacity.free_gpus(nodes, pods) == {"a": 4, "b": 0}
    assert capacity.free_gpus(nodes, pods, ignore={"ml/mine"}) == {"a": 4, "b": 8}


def test_workers_fit_on_eligible_nodes_only() -> None:
    nodes = [
        node("a", 8),
        node("b", 8, ready="False"),
        node("c", 8, unschedulable=True),
        node("d", 8, labels={"nvidia.com/gpu.product": "A100"}),
        node("e", 8, taints=[{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        node("f", 16),
    ]
    assert capacity.workers_that_fit(nodes, [], 8, H100, [GPU_TOLERATION]) == 3  # a, f x2
    assert capacity.workers_that_fit(nodes, [], 8, H100, []) == 0  # GPU taint not tolerated
    everything = [GPU_TOLERATION, {"operator": "Exists"}]
    assert capacity.workers_that_fit(nodes, [], 8, H100, everything) == 4  # e too
    assert capacity.workers_that_fit(nodes, [pod("x", "f", 10)], 4, H100, [GPU_TOLERATION]) == 3
