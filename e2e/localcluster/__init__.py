"""Lepton's local Kubernetes cluster for e2e tests and benchmarks.

A real control plane (kube-apiserver, etcd, kube-controller-manager, kube-scheduler) plus
kwok-controller for fake nodes, all built from the Go module proxy at pinned versions
(:mod:`localcluster.versions`, :mod:`localcluster.build`) and started with
``kwokctl --runtime binary`` (:mod:`localcluster.cluster`), and one real node (kubelet,
containerd, kube-proxy, CoreDNS: :mod:`localcluster.realnode`, :mod:`localcluster.nodeconfig`),
all inside a network namespace of their own (:mod:`localcluster.netns`, reached from the host
through :mod:`localcluster.forward`). Images without a registry: :mod:`localcluster.images`.
Fake GPU nodes and the kwok stages that drive pod lifecycles are rendered by
:mod:`localcluster.config`; :mod:`localcluster.kube` holds the kubectl runner and ``wait_until``
shared by tests and benchmarks.

Command line: ``PYTHONPATH=e2e python -m localcluster build|up|down|status|kubeconfig|kubectl-path``.
"""

from localcluster.build import ensure_built
from localcluster.cluster import (
    Cluster,
    ClusterError,
    cluster_mode,
    down,
    kubeconfig_path,
    kubectl_path,
    status,
    up,
)
from localcluster.kube import Kubectl, KubectlError, WaitTimeout, wait_until
from localcluster.paths import state_dir
from localcluster.nodes import add_gpu_node, delete_node, ensure_nodes

__all__ = [
    "Cluster",
    "ClusterError",
    "Kubectl",
    "KubectlError",
    "WaitTimeout",
    "add_gpu_node",
    "cluster_mode",
    "delete_node",
    "down",
    "ensure_built",
    "ensure_nodes",
    "kubeconfig_path",
    "kubectl_path",
    "state_dir",
    "status",
    "up",
    "wait_until",
]
