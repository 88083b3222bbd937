"""The operator's NetworkPolicies, enforced on real pods (kube-router on the local cluster's real node).

``test_localcluster_netpol`` proves the cluster enforces a hand-written policy; this module
proves what the operator renders (``render.network``) isolates what it says, with the
in-cluster operator (its pods are the "operator pods" the policies name) and real worker pods:

* a TrainingJob's workers (busybox listening on the rendezvous port and the progress port, so
  every connection is a real one) accept each other on the rendezvous port, and refuse it to a
  pod of the same namespace that is not in the job and to a pod of another namespace;
* the progress port refuses both, and admits the operator's pods;
* a policy deleted by hand is put back by the operator, and the denial holds;
* ``networkPolicy.enabled: false`` removes the policy and the other namespace gets through (so
  every denial above was the policy's, not a closed port);
* with ``egress`` set, workers reach DNS, each other and the ``allowTo`` peer on its port only:
  the same store's other port and a server of their own namespace are refused.

Serving's policy (8000/8001 from the namespace, 8002 from monitoring) is proven with the
protected service of ``test_inference_security``; the DDP, dataset, serving and scraping paths
with every policy on, by ``test_fullpath``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from incluster_fixtures import NAMESPACE_PREFIX, InClusterOperator
from localcluster import realnode
from localcluster.cluster import Cluster
from localcluster.kube import Kubectl, condition_true, wait_until
from pod_connections import ENFORCEMENT_BOUND_S, connect, connects, listen_script, refused, start_client

pytestmark = pytest.mark.e2e

JOB = "isolated"
POLICY = f"{JOB}-training"  # render.network.policy_name
RENDEZVOUS_PORT = 29500
PROGRESS_PORT = 9400  # render.common.progress_port()
READY_TIMEOUT = 120.0


def listening_job(name: str = JOB, network_policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Two workers that accept on the rendezvous and progress ports (and never finish)."""
    spec = {"image": realnode.BUSYBOX_REF, "command": ["sh", "-c", listen_script([RENDEZVOUS_PORT, PROGRESS_PORT])],
            "masterPort": RENDEZVOUS_PORT, "workers": {"replicas": 2},
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532}}  # fmt: skip
    if network_policy is not None:
        spec["networkPolicy"] = network_policy
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def namespace(cluster_kubectl: Kubectl, name: str) -> Kubectl:
    cluster_kubectl.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return cluster_kubectl.in_namespace(name)


def workers(kubectl: Kubectl, job: str = JOB) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = kubectl.get("pods", None, "-l", f"lepton.ai/trainingjob={job}")
    return sorted((pod for pod in pods if condition_true(pod, "Ready")), key=lambda pod: pod["metadata"]["name"])


def operator_connects(operator: InClusterOperator, ip: str, port: int) -> bool:
    """One connection from an operator pod (its image has Python, not nc)."""
    pod = operator.pods()[0]["metadata"]["name"]
    script = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=2).close()"
    proc = operator.kubectl.run("exec", pod, "--", "python", "-c", script, check=False, timeout=30)
    return proc.returncode == 0


@pytest.fixture
def sides(cluster: Cluster, cluster_kubectl: Kubectl,
          incluster_operator: InClusterOperator) -> Iterator[tuple[Kubectl, Kubectl]]:  # fmt: skip
    """The job's namespace (served by the in-cluster operator, pods on the real node) and another one."""
    if cluster.real_node is None:
        pytest.fail("network isolation is proven on the local cluster's real node")
    suffix = uuid.uuid4().hex[:6]
    names = [f"{NAMESPACE_PREFIX}isolation-{suffix}", f"{NAMESPACE_PREFIX}isolation-other-{suffix}"]
    try:
        own, other = (namespace(cluster_kubectl, name) for name in names)
        yield own, other
    finally:
        for name in names:
            cluster_kubectl.run("delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)


def test_training_workers_accept_their_job_and_the_operator_and_refuse_everyone_else(
    sides: tuple[Kubectl, Kubectl], incluster_operator: InClusterOperator
) -> None:
    own, other = sides
    own.apply(listening_job(), "--server-side")
    start_client(own, "bystander", realnode.BUSYBOX_REF)
    start_client(other, "outsider", realnode.BUSYBOX_REF)
    wait_until(lambda: len(workers(own)) == 2, READY_TIMEOUT, "both workers Ready")
    wait_until(lambda: own.get_or_none("networkpolicy", POLICY), 30, "the job's NetworkPolicy")
    first, second = workers(own)
    ip = first["status"]["podIP"]

    # The job's own pods reach each other; nobody else does, on any port but what they may use.
    assert connects(own, second["metadata"]["name"], ip, RENDEZVOUS_PORT)
    wait_until(lambda: connect(other, "outsider", ip, RENDEZVOUS_PORT), ENFORCEMENT_BOUND_S,
               "the other namespace refused the rendezvous port")  # fmt: skip
    print(f"\nanother namespace -> rendezvous port: {refused(other, 'outsider', ip, RENDEZVOUS_PORT)}")
    refused(own, "bystander", ip, RENDEZVOUS_PORT)  # same namespace, not in the job
    refused(other, "outsider", ip, PROGRESS_PORT)
    refused(own, "bystander", ip, PROGRESS_PORT)
    assert operator_connects(incluster_operator, ip, PROGRESS_PORT), "the operator reads progress"
    assert not operator_connects(incluster_operator, ip, RENDEZVOUS_PORT), "the operator has no business there"

    # Deleted by hand: the operator puts it back, and the denial holds.
    own("delete", "networkpolicy", POLICY)
    restored = wait_until(lambda: own.get_or_none("networkpolicy", POLICY), 30, "the policy put back")
    assert restored["metadata"]["ownerReferences"][0]["name"] == JOB
    wait_until(lambda: connect(other, "outsider", ip, RENDEZVOUS_PORT), ENFORCEMENT_BOUND_S, "the denial back")

    # Turned off: the policy goes and the same connection gets through (it was the policy's denial).
    own("patch", "trainingjob", JOB, "--type=merge", "-p", '{"spec": {"networkPolicy": {"enabled": false}}}')
    wait_until(lambda: own.get_or_none("networkpolicy", POLICY) is None, 30, "the policy deleted")
    wait_until(lambda: connects(other, "outsider", ip, RENDEZVOUS_PORT), ENFORCEMENT_BOUND_S,
               "the other namespace served once isolation is off")  # fmt: skip


def test_restricted_egress_reaches_dns_its_own_workers_and_what_allow_to_names_only(
    sides: tuple[Kubectl, Kubectl],
) -> None:
    own, other = sides
    store = start_client(other, "store", realnode.BUSYBOX_REF, labels={"app": "store"}, listen=[8080, 8081])
    neighbour = start_client(own, "neighbour", realnode.BUSYBOX_REF, listen=[8080])
    assert connects(own, "neighbour", store, 8081), "without a restriction the store's other port is open"
    allowed = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other.namespace}},
               "podSelector": {"matchLabels": {"app": "store"}}, "ports": [{"port": 8080}]}  # fmt: skip
    own.apply(listening_job("confined", {"egress": {"allowTo": [allowed]}}), "--server-side")
    wait_until(lambda: len(workers(own, "confined")) == 2, READY_TIMEOUT, "both workers Ready")
    first, second = (pod["metadata"]["name"] for pod in workers(own, "confined"))
    peer = workers(own, "confined")[1]["status"]["podIP"]

    wait_until(lambda: connect(own, first, store, 8081), ENFORCEMENT_BOUND_S, "the store's other port refused")
    assert connects(own, first, store, 8080), "allowTo names the store on 8080"
    assert connects(own, first, peer, RENDEZVOUS_PORT), "a job's workers always reach each other"
    refused(own, first, neighbour, 8080)  # the namespace is not in allowTo
    lookup = own.run("exec", second, "--", "nslookup", "kubernetes.default.svc.cluster.local", check=False, timeout=30)
    assert lookup.returncode == 0 and "10.0.0.1" in lookup.stdout, lookup.stderr  # DNS stays open
