"""The operator installed in the cluster as users install it: ``kubectl apply -k`` of the local overlay.

One install path for ``make demo`` and the e2e suite: a kustomization over
``manifests/overlays/local`` (the shipped base with the images built here) that pins the exact
build tags (the input hashes, so a changed image always rolls the Deployment) and serves every
namespace but the ones the suite's host-process operators own. Those serve the ``test*``
namespaces of the tests that ask for them (``operator_fixtures``), so the two kinds of operator
never act on one object, and the in-cluster one keeps the base's peering name and priorities:
two replicas, the older acts, the other stands by.

:func:`install` returns once the rollout is done and both replicas are in the peering object
(kopf joins it only once a namespace it serves exists, which ``kube-system`` always is).
:func:`uninstall` removes the Deployment and waits for its pods, so a replica still stopping
cannot write itself into the next install's peering.

:func:`crash` kills a replica as a crash does (the chaos suite, ``test_chaos_operator``): no
goodbye in the peering object, the pod replaced by the Deployment.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from localcluster.images import Image
from localcluster.kube import Kubectl, wait_until
from localcluster.lepton import OPERATOR_NAMESPACE, REPO
from lepton_operator.controllers.config import ACTIVATOR_IMAGE_ENV, WORKLOADS_IMAGE_ENV

DEPLOYMENT = "lepton-operator"
SELECTOR = f"app.kubernetes.io/name={DEPLOYMENT}"
PEERING_NAME = "lepton-operator"  # the base's (kopf's --peering-name default of lepton-operator run)
OVERLAY = REPO / "manifests" / "overlays" / "local"
#: Namespaces the suite's host-process operators own (pytest names every test ``test*``).
HOST_OPERATOR_NAMESPACES = "test*"
SERVED_NAMESPACES = f"!{HOST_OPERATOR_NAMESPACES}"
ROLLOUT_TIMEOUT = 180.0


def kustomization(images: Mapping[str, Image], directory: Path) -> str:
    """A kustomization over the local overlay: exact tags, every namespace but the host operators'."""
    operator, workloads = images["operator"].ref, images["workloads"].ref
    add_args = [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": f"--namespace={SERVED_NAMESPACES}"}]
    env = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": DEPLOYMENT},
           "spec": {"template": {"spec": {"containers": [
               {"name": "operator", "env": [{"name": WORKLOADS_IMAGE_ENV, "value": workloads},
                                            {"name": ACTIVATOR_IMAGE_ENV, "value": operator}]}]}}}}  # fmt: skip
    target = {"kind": "Deployment", "name": DEPLOYMENT}
    return yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAY, directory)],
        "images": [{"name": operator.rsplit(":", 1)[0], "newTag": operator.rsplit(":", 1)[1]}],
        "patches": [{"target": target, "patch": yaml.safe_dump(add_args)}, {"target": target, "patch": yaml.safe_dump(env)}],
    }, sort_keys=False)  # fmt: skip


def pods(kubectl: Kubectl) -> list[dict[str, Any]]:
    """The operator's pods that are not being deleted."""
    found: list[dict[str, Any]] = kubectl.in_namespace(OPERATOR_NAMESPACE).get("pods", None, "-l", SELECTOR)
    return [pod for pod in found if not pod["metadata"].get("deletionTimestamp")]


def peers(kubectl: Kubectl) -> dict[str, int]:
    """Live peers in the peering object: pod name -> priority."""
    peering = kubectl.get_or_none("clusterkopfpeering", PEERING_NAME) or {}
    return {name: int(info["priority"]) for name, info in (peering.get("status") or {}).items() if info}


def settled(kubectl: Kubectl) -> bool:
    """Two running replicas, each in the peering object, and nobody else there."""
    names = {pod["metadata"]["name"] for pod in pods(kubectl)}
    return len(names) == 2 and set(peers(kubectl)) == names


def installed(kubectl: Kubectl) -> bool:
    return kubectl.in_namespace(OPERATOR_NAMESPACE).get_or_none("deployment", DEPLOYMENT) is not None


def install(kubectl: Kubectl, images: Mapping[str, Image], directory: Path) -> None:
    """Apply the operator (CRDs, RBAC, Deployment) and wait until both replicas peer."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(kustomization(images, directory))
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(directory))
    system = kubectl.in_namespace(OPERATOR_NAMESPACE)
    system("rollout", "status", f"deployment/{DEPLOYMENT}", f"--timeout={ROLLOUT_TIMEOUT:.0f}s",
           timeout=ROLLOUT_TIMEOUT + 10)  # fmt: skip
    wait_until(lambda: settled(kubectl), 90, "both operator replicas, and only they, in the peering object")


def uninstall(kubectl: Kubectl) -> None:
    """Delete the Deployment, wait for its pods to go, then drop the peering object."""
    system = kubectl.in_namespace(OPERATOR_NAMESPACE)
    system.delete("deployment", DEPLOYMENT)
    system("wait", "--for=delete", "pod", "-l", SELECTOR, "--timeout=90s", timeout=100)
    kubectl.delete("clusterkopfpeering", PEERING_NAME)


def operator_pids(pod: str, proc: Path = Path("/proc")) -> list[int]:
    """Host pids of the operator process of replica ``pod``: its ``POD_ID`` (the peering identity).

    The local cluster's real node runs its containers in the host's pid namespace, so root sees
    them here; elsewhere (kind, a remote cluster) nothing is found.
    """
    needle = f"POD_ID={pod}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in environ and b"lepton-operator" in command:
            found.append(int(entry.name))
    return found


def crash(kubectl: Kubectl, pod: str) -> tuple[float, bool]:
    """Kill replica ``pod`` without a word and have the Deployment replace it; (wall time, hard).

    ``kubectl delete --grace-period=0 --force`` alone is no SIGKILL: the kubelet still sends
    SIGTERM and waits its minimum of 2 s, often long enough for kopf to remove its peering record. So,
    where the process is visible (the local cluster), it is frozen first (SIGSTOP: from then on it
    says nothing), the pod is force-deleted while it is frozen (so the kubelet replaces the pod
    rather than restarting the container), then SIGKILLed. ``hard`` says whether that happened;
    the time returned is the moment the replica stopped. Elsewhere only the forced deletion.
    """
    pids = operator_pids(pod)
    stopped = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    kubectl.in_namespace(OPERATOR_NAMESPACE)("delete", "pod", pod, "--grace-period=0", "--force", "--wait=false")
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # the kubelet was quicker
            pass
    return stopped, bool(pids)
