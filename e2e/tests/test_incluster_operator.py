"""The operator as users run it: installed with ``kubectl apply -k``, two replicas on the real node.

The full path: the operator image built from ``images/operator``, the shipped base through the
local overlay, the ServiceAccount's token and least-privilege ClusterRole, the hardened pod under
Pod Security ``restricted``, probes and ``/metrics`` served from the pod, kopf peering between
the replicas, and a TrainingJob reconciled from inside the cluster onto kwok GPU nodes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from incluster_fixtures import InClusterOperator
from localcluster import config
from localcluster.cluster import Cluster
from localcluster.kube import Kubectl, wait_until
from localcluster.lepton import OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT
from lepton_operator.controllers.config import PEERING_LIFETIME
from operator_fixtures import metric_samples

pytestmark = pytest.mark.e2e

TIMEOUT = 90.0
RESTRICTED = "pod-security.kubernetes.io/enforce"
RESUMED, PAUSED = "Resuming operations", "Pausing operations"


def condition(pod: dict[str, Any], kind: str) -> str | None:
    return next((c["status"] for c in pod["status"].get("conditions", []) if c["type"] == kind), None)


def test_incluster_operator_runs_hardened_on_the_real_node_as_its_service_account(
    incluster_operator: InClusterOperator, cluster: Cluster, cluster_kubectl: Kubectl
) -> None:
    pods = incluster_operator.pods()
    assert len(pods) == 2
    for pod in pods:
        spec, status = pod["spec"], pod["status"]
        if cluster.real_node is not None:  # the local cluster; on kind every node is real
            assert spec["nodeName"] == cluster.real_node, spec["nodeName"]
        assert status["phase"] == "Running" and condition(pod, "Ready") == "True"
        [container] = spec["containers"]
        assert container["image"] == incluster_operator.image and container["imagePullPolicy"] == "Never"
        assert {e["name"]: e.get("value") for e in container["env"]}["LEPTON_WORKLOADS_IMAGE"] == (
            incluster_operator.workloads_image)
        # Its own identity: the ServiceAccount's projected token, nothing else to authenticate with.
        assert spec["serviceAccountName"] == OPERATOR_SERVICE_ACCOUNT
        assert any(v.get("projected") and v["name"].startswith("kube-api-access-") for v in spec["volumes"])
        [state] = status["containerStatuses"]
        assert state["ready"] and state["restartCount"] == 0  # liveness never failed
    # Pod Security: the namespace enforces `restricted`, and re-checking the running pods
    # against it (a server-side dry run of the label) finds nothing to warn about.
    namespace = cluster_kubectl.get("namespace", OPERATOR_NAMESPACE)
    assert namespace["metadata"]["labels"][RESTRICTED] == "restricted"
    check = cluster_kubectl.run("label", "--dry-run=server", "--overwrite", "namespace", OPERATOR_NAMESPACE,
                                f"{RESTRICTED}=restricted")  # fmt: skip
    assert "violate" not in check.stderr and "Warning" not in check.stderr, check.stderr


def test_incluster_operator_answers_health_and_metrics_from_its_pod(incluster_operator: InClusterOperator) -> None:
    for pod in incluster_operator.pods():
        name = pod["metadata"]["name"]
        assert incluster_operator.proxy(name, 8081, "/healthz")
        text = incluster_operator.proxy(name, 8080, "/metrics")
        assert "lepton_reconcile_seconds_count" in text and "lepton_training_workers" in text


def last_peering_decision(log: str) -> str | None:
    """``"acting"`` or ``"paused"`` from kopf's last peering message (replicas start paused)."""
    decisions = [line for line in log.splitlines() if RESUMED in line or PAUSED in line]
    return None if not decisions else ("acting" if RESUMED in decisions[-1] else "paused")


def test_incluster_operator_replicas_peer_so_that_one_acts_and_the_other_waits_then_takes_over(
    incluster_operator: InClusterOperator,
) -> None:
    names = {pod["metadata"]["name"] for pod in incluster_operator.pods()}
    peers = incluster_operator.peers()
    assert set(peers) == names  # each replica announces itself under its pod name (POD_ID)
    assert len(set(peers.values())) == 2  # distinct priorities: never a tie that pauses both
    active = incluster_operator.active()
    [standby] = names - {active}
    # Mandatory peering starts every replica paused; only the highest priority resumes.
    assert wait_until(lambda: last_peering_decision(incluster_operator.logs(active)) == "acting", TIMEOUT,
                      f"the active replica {active} to resume")  # fmt: skip
    assert last_peering_decision(incluster_operator.logs(standby)) in (None, "paused")
    # The active replica goes away: on SIGTERM it leaves the peering object and the standby acts
    # at once; a replica that dies without a word blocks it for the peering lifetime at most.
    started = time.monotonic()
    incluster_operator.kubectl("delete", "pod", active, "--wait=true", "--timeout=90s", timeout=100)
    wait_until(lambda: last_peering_decision(incluster_operator.logs(standby)) == "acting",
               PEERING_LIFETIME + TIMEOUT, f"the standby {standby} to take over")  # fmt: skip
    print(f"standby {standby} took over {time.monotonic() - started:.1f} s after the active replica's deletion")
    # The Deployment replaces the pod; leave two settled replicas for the next test.
    incluster_operator.kubectl("rollout", "status", "deployment/lepton-operator", "--timeout=180s", timeout=190)
    wait_until(incluster_operator.settled, TIMEOUT, "two replicas peering again")
    # Replicas rank by start time: the younger replacement stands by and never takes the work back.
    [replacement] = {p["metadata"]["name"] for p in incluster_operator.pods()} - {standby}
    assert incluster_operator.active() == standby
    assert last_peering_decision(incluster_operator.logs(replacement)) in (None, "paused")
    assert last_peering_decision(incluster_operator.logs(standby)) == "acting"


def test_incluster_operator_reconciles_a_gpu_training_job_onto_kwok_nodes(
    incluster_operator: InClusterOperator, incluster_namespace: str, cluster_kubectl: Kubectl
) -> None:
    kubectl = cluster_kubectl.in_namespace(incluster_namespace)
    job = {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "bert"},
           "spec": {"image": incluster_operator.workloads_image,
                    "workers": {"replicas": 2, "gpu": {"count": 2, "product": config.GPU_PRODUCT}}}}  # fmt: skip
    kubectl.apply(job, "--server-side")

    def running() -> dict[str, Any] | None:
        status: dict[str, Any] = kubectl.get("tj", "bert").get("status", {})
        return status if status.get("phase") == "Running" else None

    status = wait_until(running, TIMEOUT, "TrainingJob bert Running, reconciled in-cluster")
    assert status["workers"]["ready"] == 2
    pods = kubectl.get("pods", None, "-l", "lepton.ai/trainingjob=bert,lepton.ai/role=worker")
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("kwok-gpu-"), pod["spec"]["nodeName"]
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    # The replica that acts did it: its metrics count the job's workers; the standby's do not.
    active = incluster_operator.active()
    samples = metric_samples(incluster_operator.proxy(active, 8080, "/metrics"), "lepton_training_workers")
    assert samples[(("state", "desired"),)] >= 2
    [standby] = {p["metadata"]["name"] for p in incluster_operator.pods()} - {active}
    idle = metric_samples(incluster_operator.proxy(standby, 8080, "/metrics"), "lepton_reconcile_seconds_count")
    assert idle.get((("kind", "TrainingJob"),), 0.0) == 0.0
