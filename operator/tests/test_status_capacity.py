"""Free resources per node and how many workers fit, as the scheduler would count them."""

from __future__ import annotations

import json
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
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"}, "conditions": [{"type": "Ready", "status": ready}]},
    }


def pod(name: str, node_name: str, gpus: int, phase: str = "Running", namespace: str = "ml") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus}}}]},
            "status": {"phase": phase}}  # fmt: skip


def gpu_worker(gpus: int, cpu: str = "1") -> capacity.Demand:
    return capacity.Demand.of({"spec": {"nodeSelector": H100, "tolerations": [GPU_TOLERATION],
                                        "containers": [{"resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"cpu": cpu}}}]}})  # fmt: skip


def test_requests_count_limits_for_missing_requests_init_containers_and_overhead() -> None:
    spec = {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                           {"resources": {"limits": {"cpu": "250m", "nvidia.com/gpu": "2"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
            "overhead": {"memory": "64Mi"}}  # fmt: skip
    assert capacity.pod_requests({"spec": spec}) == (2000, (1 << 30) + (64 << 20), 1, 2)
    assert capacity.describe(capacity.pod_requests({"spec": spec})) == "cpu 2, memory 1088Mi, nvidia.com/gpu 2"


def test_free_resources_subtract_unfinished_bound_pods_except_ignored_ones() -> None:
    nodes = [node("a", 8), node("b", 8)]
    pods = [pod("x", "a", 4), pod("done", "a", 4, phase="Succeeded"), pod("mine", "b", 8), pod("pending", "", 8)]
    cluster = capacity.Cluster(nodes, pods)
    assert {n: f[3] for n, f in cluster.free().items()} == {"a": 4, "b": 0}
    assert {n: f[3] for n, f in cluster.free(ignore={"ml/mine"}).items()} == {"a": 4, "b": 8}


def test_workers_fit_on_eligible_nodes_only() -> None:
    nodes = [
        node("a", 8),
        node("b", 8, ready="False"),
        node("c", 8, unschedulable=True),
        node("d", 8, labels={"nvidia.com/gpu.product": "A100"}),
        node("e", 8, taints=[{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]),
        node("f", 16),
    ]
    cluster = capacity.Cluster(nodes, [])
    assert cluster.room_for(gpu_worker(8), 10) == 3  # a, f x2
    untolerated = capacity.Demand(gpu_worker(8).requests, tuple(H100.items()), "[]")
    assert cluster.room_for(untolerated, 10) == 0  # the GPU taint is not tolerated
    everything = capacity.Demand(gpu_worker(8).requests, tuple(H100.items()), json.dumps([GPU_TOLERATION, {"operator": "Exists"}]))
    assert cluster.room_for(everything, 10) == 4  # e too
    assert capacity.Cluster(nodes, [pod("x", "f", 10)]).room_for(gpu_worker(4), 10) == 3
    assert cluster.room_for(gpu_worker(1), 5) == 5  # never more than asked


def test_every_resource_limits_the_fit_not_only_gpus() -> None:
    small = node("a", 8)
    small["status"]["allocatable"] = {"nvidia.com/gpu": "8", "cpu": "3", "memory": "8Gi", "pods": "110"}
    assert capacity.Cluster([small], []).room_for(gpu_worker(1, cpu="1"), 8) == 3  # cpu, not GPUs
    small["status"]["allocatable"]["pods"] = "2"
    assert capacity.Cluster([small], []).room_for(gpu_worker(1, cpu="1"), 8) == 2  # pod slots


def test_demand_in_flight_and_reservations_take_room_first_and_a_pending_pod_that_fits_nowhere_takes_none() -> None:
    nodes = [node("a", 8), node("b", 8)]
    in_flight = pod("queued", "", 4)
    gated = {**pod("gated", "", 8), "spec": {**pod("gated", "", 8)["spec"], "schedulingGates": [{"name": "x"}]}}
    giant = pod("giant", "", 64)
    for queued in (in_flight, giant, gated):
        queued["spec"].update(nodeSelector=H100, tolerations=[GPU_TOLERATION])
    cluster = capacity.Cluster(nodes, [in_flight, giant, gated])
    assert cluster.room_for(gpu_worker(4), 4) == 3  # 16 GPUs - 4 in flight; the giant and the gated take none
    assert cluster.room_for(gpu_worker(4), 4, ignore={"ml/queued"}) == 4  # the job's own pod
    assert cluster.room_for(gpu_worker(4), 4, reserved=[(gpu_worker(8), 1)]) == 1


def test_best_fit_keeps_a_whole_node_for_a_whole_node_worker() -> None:
    """One 4-GPU worker then one 8-GPU worker on two 8-GPU nodes: both fit only if the first packs tight."""
    nodes = [node("a", 8), node("b", 8)]
    assert capacity.Cluster(nodes, []).room_for(gpu_worker(8), 1, reserved=[(gpu_worker(4), 1)]) == 1
    half_used = capacity.Cluster(nodes, [pod("x", "b", 4)])
    assert half_used.room_for(gpu_worker(8), 1, reserved=[(gpu_worker(4), 1)]) == 1  # the 4 goes next to x


def test_held_says_whether_waiting_helps_and_what_is_short_when_it_does_not() -> None:
    nodes = [node("a", 8), node("b", 8)]
    busy = capacity.Cluster(nodes, [pod("x", "a", 8)])
    assert busy.held(gpu_worker(8), 1) is None
    assert busy.held(gpu_worker(8), 2) == ("WaitingForCapacity", "waiting for room for the whole group: 2 workers of cpu 1, nvidia.com/gpu 8 each, 1 fit now")
    never = busy.held(gpu_worker(16), 2)
    assert never is not None and never.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in never.message
    assert "at most 0 of 2 eligible nodes' room" in never.message
    nowhere = capacity.Demand(gpu_worker(1).requests, (("nvidia.com/gpu.product", "B200"),), "[]")
    assert "no Ready, schedulable node matches" in str(busy.held(nowhere, 1))


def test_a_jobs_own_pods_are_found_by_label_in_the_listing_and_an_empty_selector_finds_none() -> None:
    labelled = [{**pod(name, "a", 1, namespace=ns), "metadata": {"name": name, "namespace": ns, "labels": labels}}
                for name, ns, labels in (("w0", "ml", {"job": "x", "role": "worker"}), ("w1", "ml", {"job": "x"}),
                                         ("w2", "other", {"job": "x", "role": "worker"}))]  # fmt: skip
    cluster = capacity.Cluster([node("a", 8)], labelled)
    assert cluster.pods_labelled("ml", {"job": "x", "role": "worker"}) == {"ml/w0"}
    assert cluster.pods_labelled("ml", {}) == set()
