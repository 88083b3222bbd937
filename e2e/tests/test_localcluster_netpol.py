"""NetworkPolicies are enforced on the local cluster's real node, on real pods.

The local cluster's real node runs kube-router's NetworkPolicy controller (test harness only, see
``localcluster.kuberouter``); on kind, its CNI enforces them. The test writes its own policy
(admit ingress to the server only from pods of the server's namespace), so it proves enforcement
independently of what the operator renders:

* before the policy, a client in another namespace is served: without enforcement the test fails;
* once the policy exists, that client is denied within a bounded time (kube-router syncs on the
  policy's event; it *rejects*, so the client sees "connection refused" at once rather than a
  timeout), while a client in the server's namespace is still served;
* the node itself (a process in the cluster's network namespace, as the port forwarder or a
  host-process operator or Prometheus would be) is still served: kube-router accepts every
  packet whose source is a local address of the node;
* deleting the policy restores the other namespace's access within the same bound.

Server and clients are busybox: ``nc -ll -e`` answers every connection with a token (which the
node's own check reads back); clients connect through ``pod_connections``, one connection attempt
per check, repeated until a deadline where a change is awaited.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import localcluster
from localcluster.kube import Kubectl, wait_until
from pod_connections import CONNECT_TIMEOUT_S, ENFORCEMENT_BOUND_S, connect, connects, start_client
from test_realnode import busybox, busybox_pod, wait_ready  # noqa: F401 - busybox is a fixture

pytestmark = pytest.mark.e2e

PORT = 8080
TOKEN = "served-by-netpol-server"


def same_namespace_only_policy(server_labels: dict[str, str]) -> dict[str, Any]:
    """Ingress to the server only from pods of its own namespace (an empty podSelector peer)."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "same-namespace"},
            "spec": {"podSelector": {"matchLabels": server_labels}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {}}]}]}}


def test_same_namespace_policy_denies_other_namespaces_until_removed(
        cluster: localcluster.Cluster, cluster_kubectl: Kubectl, real_namespace: str, other_real_namespace: str,
        busybox: str) -> None:  # noqa: F811 - the fixture imported above
    own = cluster_kubectl.in_namespace(real_namespace)
    other = cluster_kubectl.in_namespace(other_real_namespace)
    labels = {"app": "netpol-server"}
    server = busybox_pod("server", busybox, f"exec nc -ll -p {PORT} -e echo {TOKEN}", labels=labels)
    server["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": PORT}, "periodSeconds": 1}
    own.create(server)
    start_client(own, "client", busybox)
    start_client(other, "client", busybox)
    ip = wait_ready(own, "server")["status"]["podIP"]

    assert connects(own, "client", ip, PORT)
    assert connects(other, "client", ip, PORT), "without a policy the other namespace must be served"

    created = time.monotonic()
    own.create(same_namespace_only_policy(labels))
    error = wait_until(lambda: connect(other, "client", ip, PORT), ENFORCEMENT_BOUND_S,
                       "the other namespace's client denied by the policy")
    print(f"\npolicy enforced {time.monotonic() - created:.1f} s after its create; the client saw: {error}")
    assert connects(own, "client", ip, PORT), "the policy admits pods of the server's namespace"
    assert connect(other, "client", ip, PORT), "the denial holds"
    if cluster.network:  # the node's own address is always admitted (see localcluster.kuberouter)
        from_node = cluster.run_in_network(["busybox", "nc", "-w", str(CONNECT_TIMEOUT_S), ip, str(PORT)])
        assert TOKEN in from_node.stdout, from_node.stderr

    deleted = time.monotonic()
    own.delete("networkpolicy", "same-namespace")
    wait_until(lambda: connects(other, "client", ip, PORT), ENFORCEMENT_BOUND_S,
               "the other namespace's client served again once the policy is gone")
    print(f"policy lifted {time.monotonic() - deleted:.1f} s after its delete")
