"""The operator installed in the cluster as users install it, from the images built here.

* ``built_images`` (session): the shipped images (``localcluster.lepton_images``; ``make test``
  builds them before pytest, so this is seconds), imported into the real node's containerd
  (skipped when it holds the same digest) and tagged ``local`` there as well.
* ``incluster_operator`` (session): ``kubectl apply --server-side -k`` of a kustomization over
  ``manifests/overlays/local`` that only pins the exact build tags (the input hashes) and
  confines the operator to this suite's namespaces. Two replicas run on the real node under the
  ``lepton-operator`` ServiceAccount; returned once both are Ready (readiness probe on
  ``/healthz``) and both are in the peering object (kopf starts peering only once a namespace it
  serves exists, so the fixture keeps one for the session). Removed at the end unless another session still uses the
  cluster.
* ``incluster_namespace`` (function, in ``conftest``): a fresh kwok namespace whose name starts
  with :data:`NAMESPACE_PREFIX`, which only the in-cluster operator serves.

Isolation from the host-process operator (``operator_fixtures``): that one serves
``<test name>-*`` globs of the tests that ask for it, which always start with ``test``; the
in-cluster one serves only :data:`NAMESPACE_PREFIX`-prefixed namespaces and peers under its own
name, so the two never act on the same object and never pause each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import config, lepton_images, sharing
from localcluster.cluster import Cluster
from localcluster.images import Image
from localcluster.kube import Kubectl, wait_until
from localcluster.lepton import OPERATOR_NAMESPACE, REPO
from lepton_operator.controllers.config import WORKLOADS_IMAGE_ENV

NAMESPACE_PREFIX = "ic-"
PEERING_NAME = "lepton-e2e-incluster"
DEPLOYMENT = "lepton-operator"
SELECTOR = f"app.kubernetes.io/name={DEPLOYMENT}"
OVERLAY = REPO / "manifests" / "overlays" / "local"
ROLLOUT_TIMEOUT = 180.0


@dataclass(frozen=True)
class InClusterOperator:
    """The operator Deployment in ``lepton-system`` and how to reach its pods."""

    kubectl: Kubectl  # bound to lepton-system
    image: str
    workloads_image: str

    def pods(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.kubectl.get("pods", None, "-l", SELECTOR)
        return [pod for pod in found if not pod["metadata"].get("deletionTimestamp")]

    def settled(self) -> bool:
        """Two running replicas, each in the peering object, and nobody else there."""
        names = {pod["metadata"]["name"] for pod in self.pods()}
        return len(names) == 2 and set(self.peers()) == names

    def proxy(self, pod: str, port: int, path: str) -> str:
        """GET ``path`` on a pod's port through the API server's pod proxy."""
        return self.kubectl("get", "--raw", f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{pod}:{port}/proxy{path}")

    def logs(self, pod: str) -> str:
        return self.kubectl("logs", pod)

    def peers(self) -> dict[str, int]:
        """Live peers in the peering object: pod name -> priority."""
        peering = self.kubectl.get_or_none("clusterkopfpeering", PEERING_NAME) or {}
        return {name: int(info["priority"]) for name, info in (peering.get("status") or {}).items() if info}

    def active(self) -> str:
        """The replica that acts: the peer with the highest priority (kopf pauses the others)."""
        peers = self.peers()
        return max(peers, key=lambda name: peers[name])


def kustomization(images: dict[str, Image], directory: Path) -> str:
    """A kustomization over the local overlay: exact tags, this suite's namespaces, own peering."""
    operator, workloads = images["operator"].ref, images["workloads"].ref
    args = [f"--namespace={NAMESPACE_PREFIX}*", f"--peering-name={PEERING_NAME}"]
    add_args = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg} for arg in args]
    env = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT},
           "spec": {"template": {"spec": {"containers": [
               {"name": "operator", "env": [{"name": WORKLOADS_IMAGE_ENV, "value": workloads}]}]}}}}  # fmt: skip
    target = {"kind": "Deployment", "name": DEPLOYMENT}
    return yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAY, directory)],
        "images": [{"name": operator.rsplit(":", 1)[0], "newTag": operator.rsplit(":", 1)[1]}],
        "patches": [{"target": target, "patch": yaml.safe_dump(add_args)}, {"target": target, "patch": yaml.safe_dump(env)}],
    }, sort_keys=False)  # fmt: skip


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
    directory = tmp_path_factory.mktemp("incluster-operator")
    (directory / "kustomization.yaml").write_text(kustomization(built_images, directory))
    cluster_kubectl("apply", "--server-side", "--force-conflicts", "-k", str(directory))
    system = cluster_kubectl.in_namespace(OPERATOR_NAMESPACE)
    system("rollout", "status", f"deployment/{DEPLOYMENT}", f"--timeout={ROLLOUT_TIMEOUT:.0f}s",
           timeout=ROLLOUT_TIMEOUT + 10)  # fmt: skip
    running = InClusterOperator(system, built_images["operator"].ref, built_images["workloads"].ref)
    # kopf starts peering only once a namespace it serves exists: one for the whole session, so
    # the replicas have settled who acts before the first test creates anything.
    anchor = f"{NAMESPACE_PREFIX}session-{uuid.uuid4().hex[:6]}"
    cluster_kubectl.create(config.kwok_namespace(anchor))
    try:
        wait_until(running.settled, 90, "both replicas, and only they, in the peering object")
        yield running
    finally:
        cluster_kubectl.delete("namespace", anchor)
        if not sharing.other_users():
            system.delete("deployment", DEPLOYMENT)
            # Replicas still stopping would write themselves into the next session's peering object.
            system("wait", "--for=delete", "pod", "-l", SELECTOR, "--timeout=90s", timeout=100)
            cluster_kubectl.delete("clusterkopfpeering", PEERING_NAME)
