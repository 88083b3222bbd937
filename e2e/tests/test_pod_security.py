"""Every pod the operator creates is admitted where Pod Security ``restricted`` is enforced.

The check is the API server's own PodSecurity admission: the test namespace is labelled
``enforce=restricted``, so a worker pod the operator creates directly would be refused with a
403, and a Job's or Deployment's pod would never appear (their controllers record FailedCreate).
One object of each kind; the test waits for their pods to exist.
"""

from __future__ import annotations

from typing import Any

import pytest

from localcluster.kube import Kubectl, condition, wait_until
from operator_fixtures import RunningOperator

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"


def lepton(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def pods_of(kubectl: Kubectl, label: str) -> list[dict[str, Any]] | None:
    pods: list[dict[str, Any]] = kubectl.get("pods", None, "-l", label)
    return pods or None


def test_pods_of_all_three_kinds_are_admitted_under_restricted(
    lepton_operator: RunningOperator, cluster_kubectl: Kubectl, kubectl: Kubectl, namespace: str
) -> None:
    cluster_kubectl("label", "namespace", namespace, RESTRICTED, "pod-security.kubernetes.io/enforce-version=latest")
    kubectl.apply([
        lepton("TrainingJob", "train", {"image": "ghcr.io/example/trainer:1",
                                        "workers": {"replicas": 2, "gpu": {"count": 1}}}),
        lepton("LeptonDataset", "data", {"source": {"uri": "https://data.example.com/corpus.tar"},
                                         "modality": "text", "storage": {"size": "1Gi"}}),
        lepton("InferenceService", "serve", {"model": {"name": "m", "source": {"uri": "https://models.example/m/"},
                                                       "inputs": [{"name": "IN", "dims": [4]}],
                                                       "outputs": [{"name": "OUT", "dims": [2]}]},
                                             "gpu": {"count": 1}}),
        lepton("InferenceService", "idle", {"model": {"name": "m", "source": {"uri": "https://models.example/m/"}},
                                            "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "target": 1,
                                                            "scaleToZeroAfterSeconds": 60}}),  # its activator's pods
    ], "--server-side")  # fmt: skip
    for label in ("lepton.ai/trainingjob=train", "lepton.ai/leptondataset=data", "lepton.ai/inferenceservice=serve",
                  "lepton.ai/inferenceservice=idle,lepton.ai/role=activator"):
        pods = wait_until(lambda: pods_of(kubectl, label), TIMEOUT, f"pods with {label} admitted")
        for pod in pods:
            assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    workers = pods_of(kubectl, "lepton.ai/trainingjob=train")
    assert workers is not None and len(workers) == 2
    # A root opt-out is refused by the same admission, and the job's Ready condition says why.
    kubectl.apply(lepton("TrainingJob", "as-root", {"image": "ghcr.io/example/trainer:1",
                                                    "securityContext": {"runAsUser": 0}}), "--server-side")  # fmt: skip

    def refused() -> str | None:
        ready = condition(kubectl.get("tj", "as-root"), "Ready") or {}
        return str(ready["message"]) if "violates PodSecurity" in ready.get("message", "") else None

    message = wait_until(refused, TIMEOUT, "the root worker's refusal in the Ready condition")
    assert "runAsUser=0" in message and "ForbiddenError 403 Forbidden" in message
