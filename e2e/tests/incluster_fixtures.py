"""The operator installed in the cluster as users install it, from the images built here.

* ``built_images`` (session): the shipped images (``localcluster.lepton_images``; ``make test``
  builds them before pytest, so this is seconds), imported into the real node's containerd
  (skipped when it holds the same digest) and tagged ``local`` there as well.
* ``incluster_operator`` (session): ``localcluster.incluster.install``, the path ``make demo``
  takes too: ``kubectl apply --server-side -k`` over ``manifests/overlays/local`` with the exact
  build tags. Two replicas run on the real node under the ``lepton-operator`` ServiceAccount;
  returned once both are Ready (readiness probe on ``/healthz``) and both are in the peering
  object. Removed at the end unless another session or the demo still uses it.
* ``incluster_namespace`` (function, in ``conftest``): a fresh kwok namespace whose name starts
  with :data:`NAMESPACE_PREFIX`. A plain namespace with that prefix (no kwok annotations) is the
  in-cluster operator's too, with its pods on the real node (``test_network_isolation``,
  ``test_inference_security``, ``test_source_tls`` make theirs).

Isolation from the host-process operator (``operator_fixtures``): that one serves
``<test name>-*`` globs of the tests that ask for it, which always start with ``test``; the
in-cluster one serves every namespace but ``test*`` and peers under its own name, so the two
never act on the same object and never pause each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from localcluster import incluster, lepton_images, sharing
from localcluster.cluster import Cluster
from localcluster.demo import demo_running
from localcluster.images import Image
from localcluster.kube import Kubectl
from localcluster.lepton import OPERATOR_NAMESPACE

NAMESPACE_PREFIX = "ic-"
DEPLOYMENT = incluster.DEPLOYMENT


@dataclass(frozen=True)
class InClusterOperator:
    """The operator Deployment in ``lepton-system`` and how to reach its pods."""

    kubectl: Kubectl  # bound to lepton-system
    cluster_kubectl: Kubectl
    image: str
    workloads_image: str

    def pods(self) -> list[dict[str, Any]]:
        return incluster.pods(self.cluster_kubectl)

    def settled(self) -> bool:
        return incluster.settled(self.cluster_kubectl)

    def proxy(self, pod: str, port: int, path: str) -> str:
        """GET ``path`` on a pod's port through the API server's pod proxy."""
        return self.kubectl("get", "--raw", f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{pod}:{port}/proxy{path}")

    def logs(self, pod: str) -> str:
        return self.kubectl("logs", pod)

    def peers(self) -> dict[str, int]:
        return incluster.peers(self.cluster_kubectl)

    def active(self) -> str:
        """The replica that acts: the peer with the highest priority (kopf pauses the others)."""
        peers = self.peers()
        return max(peers, key=lambda name: peers[name])


@pytest.fixture(scope="session")
def built_images(cluster: Cluster) -> dict[str, Image]:
    built = lepton_images.ensure_images()
    lepton_images.load(cluster, built)
    return built


@pytest.fixture(scope="session")
def incluster_operator(
    built_images: dict[str, Image], cluster_kubectl: Kubectl, lepton_crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[InClusterOperator]:  # fmt: skip
    incluster.install(cluster_kubectl, built_images, tmp_path_factory.mktemp("incluster-operator"))
    system = cluster_kubectl.in_namespace(OPERATOR_NAMESPACE)
    try:
        yield InClusterOperator(system, cluster_kubectl, built_images["operator"].ref, built_images["workloads"].ref)
    finally:
        if not sharing.other_users() and not demo_running():
            incluster.uninstall(cluster_kubectl)
