"""The local cluster behaves like a GPU cluster as far as the operator can tell.

Checks the things every other e2e test leans on: fake GPU nodes are Ready and advertise 8
``nvidia.com/gpu``; the real scheduler honours GPU requests, the GPU taint and the product
selector; kwok stages run pods, complete Job pods, keep other pods Running, fail labelled pods
with a chosen exit code and reason, and complete annotated pods with a termination message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import localcluster
from localcluster import config
from localcluster.kube import Kubectl, condition, condition_true, pod_phase, terminated_states, wait_until

pytestmark = pytest.mark.e2e

IMAGE = "registry.k8s.io/pause:3.10"  # never pulled on the local cluster; runs for ever on kind
TIMEOUT = 30.0


def pod(name: str, *, gpus: int = 0, tolerate: bool = True, select_product: bool = True,
        labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": IMAGE}
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never",
                            "terminationGracePeriodSeconds": 0}
    if gpus:
        container["resources"] = {"limits": {config.GPU_RESOURCE: str(gpus)}}
        if tolerate:
            spec["tolerations"] = [config.GPU_TOLERATION]
        if select_product:
            spec["nodeSelector"] = {config.GPU_PRODUCT_LABEL: config.GPU_PRODUCT}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "spec": spec}


def job(name: str) -> dict[str, Any]:
    template = pod("unused")
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": template["spec"]}}}


def wait_phase(kubectl: Kubectl, name: str, phase: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl.json("get", "pod", name)
        return obj if pod_phase(obj) == phase else None
    return wait_until(check, TIMEOUT, f"pod {name} {phase}")


def unschedulable_message(kubectl: Kubectl, name: str) -> str:
    """Wait for PodScheduled=False/Unschedulable and return the scheduler's message."""
    def check() -> str | None:
        cond = condition(kubectl.json("get", "pod", name), "PodScheduled")
        if cond and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return str(cond.get("message", ""))
        return None
    return wait_until(check, TIMEOUT, f"pod {name} Unschedulable")


def needs_kwok(cluster: localcluster.Cluster) -> None:
    if not cluster.fake_nodes:
        pytest.skip("needs the local kwok cluster (its stages and fake nodes); kind and "
                    "LEPTON_E2E_KUBECONFIG clusters run real containers")


def test_nodes_ready_and_gpu_nodes_advertise_8_gpus(cluster: localcluster.Cluster,
                                                    cluster_kubectl: Kubectl) -> None:
    nodes = cluster_kubectl.get("nodes")
    assert nodes and all(condition_true(n, "Ready") for n in nodes), \
        [(n["metadata"]["name"], condition(n, "Ready")) for n in nodes]
    gpu_nodes = [n for n in nodes if n["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"]
    if cluster.mode == "local":
        assert len(gpu_nodes) == config.node_counts()[1]
    assert gpu_nodes, "no GPU nodes"
    for n in gpu_nodes:
        assert n["status"]["allocatable"][config.GPU_RESOURCE] == "8"
        assert n["status"]["capacity"][config.GPU_RESOURCE] == "8"
        assert n["metadata"]["labels"][config.GPU_PRODUCT_LABEL] == config.GPU_PRODUCT
        assert config.GPU_TAINT in n["spec"]["taints"]


def test_gpu_pod_lands_on_gpu_node_and_runs(kubectl: Kubectl) -> None:
    kubectl.create(pod("gpu2", gpus=2))
    running = wait_phase(kubectl, "gpu2", "Running")
    node = kubectl.in_namespace(None).json("get", "node", running["spec"]["nodeName"])
    assert node["metadata"]["labels"][config.GPU_PRODUCT_LABEL] == config.GPU_PRODUCT
    assert condition_true(running, "Ready")


def test_pod_asking_more_gpus_than_a_node_has_stays_pending(kubectl: Kubectl) -> None:
    kubectl.create(pod("gpu9", gpus=9))
    assert "Insufficient nvidia.com/gpu" in unschedulable_message(kubectl, "gpu9")
    assert pod_phase(kubectl.json("get", "pod", "gpu9")) == "Pending"


def test_gpu_pod_without_toleration_is_not_scheduled(kubectl: Kubectl) -> None:
    kubectl.create(pod("notol", gpus=1, tolerate=False))
    message = unschedulable_message(kubectl, "notol")
    # 1.36 no longer names the taint: "4 node(s) had untolerated taint(s)" (the GPU nodes).
    assert "had untolerated taint" in message, message
    assert not kubectl.json("get", "pod", "notol")["spec"].get("nodeName")


def test_job_pod_completes_while_plain_pod_keeps_running(cluster: localcluster.Cluster,
                                                         kubectl: Kubectl) -> None:
    needs_kwok(cluster)
    kubectl.create(pod("worker"))
    wait_phase(kubectl, "worker", "Running")
    kubectl.create(job("done"))
    wait_until(lambda: condition_true(kubectl.json("get", "job", "done"), "Complete"), TIMEOUT,
               "job done Complete")
    [job_pod] = kubectl.get("pods", None, "-l", "job-name=done")
    assert pod_phase(job_pod) == "Succeeded"
    assert pod_phase(kubectl.json("get", "pod", "worker")) == "Running"  # not owned by a Job


def test_labelled_pod_fails_with_chosen_exit_code_and_reason(cluster: localcluster.Cluster,
                                                             kubectl: Kubectl) -> None:
    needs_kwok(cluster)
    kubectl.create(pod("oom", gpus=1, labels={config.FAIL_LABEL: "true"},
                       annotations={config.FAIL_EXIT_CODE: "137", config.FAIL_REASON: "OOMKilled",
                                    config.FAIL_MESSAGE: "killed by the test", config.FAIL_DELAY: "1s"}))
    failed = wait_phase(kubectl, "oom", "Failed")
    [term] = terminated_states(failed)
    assert (term["exitCode"], term["reason"], term["message"]) == (137, "OOMKilled", "killed by the test")


def test_annotated_pod_completes_with_termination_message(cluster: localcluster.Cluster,
                                                          kubectl: Kubectl) -> None:
    needs_kwok(cluster)
    result = json.dumps({"shards": 4, "bytes": 123456, "note": "quotes \" and: colons"})
    kubectl.create(pod("prep", annotations={config.TERMINATION_MESSAGE: result}))
    done = wait_phase(kubectl, "prep", "Succeeded")
    [term] = terminated_states(done)
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert json.loads(term["message"]) == json.loads(result)

    kubectl.create(pod("prep-fail", annotations={config.TERMINATION_MESSAGE: "no space left",
                                                 config.TERMINATION_EXIT_CODE: "3"}))
    [term] = terminated_states(wait_phase(kubectl, "prep-fail", "Failed"))
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", "no space left")


def test_gpu_node_can_be_added_and_removed(cluster: localcluster.Cluster, kubectl: Kubectl) -> None:
    needs_kwok(cluster)
    name = localcluster.add_gpu_node(kubectl, gpus=4)
    try:
        node = kubectl.in_namespace(None).json("get", "node", name)
        assert node["status"]["allocatable"][config.GPU_RESOURCE] == "4"
        spec = pod("on-new-node", gpus=1)
        spec["spec"]["nodeName"] = name
        kubectl.create(spec)
        wait_phase(kubectl, "on-new-node", "Running")
    finally:
        localcluster.delete_node(kubectl, name)
    assert kubectl.in_namespace(None).get_or_none("node", name) is None
