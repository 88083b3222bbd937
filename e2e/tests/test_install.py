"""The shipped kustomizations build, apply server-side, and the operator pod meets Pod Security.

What users run (`kubectl apply --server-side -k manifests/...`), on the real API
server: the base and both overlays; the monitoring component builds (its CRDs
come from the Prometheus Operator, which the local cluster does not run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from localcluster import config, incluster
from localcluster.kube import Kubectl, pod_phase, wait_until

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/single-namespace"]

pytestmark = pytest.mark.e2e


def build(kubectl: Kubectl, path: str) -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(kubectl("kustomize", str(MANIFESTS / path))) if doc]


@pytest.mark.parametrize("path", [*KUSTOMIZATIONS, "components/monitoring"])
def test_kustomization_builds(path: str, cluster_kubectl: Kubectl) -> None:
    kinds = {doc["kind"] for doc in build(cluster_kubectl, path)}
    if path == "components/monitoring":
        assert kinds == {"ServiceMonitor", "PrometheusRule"}
    else:
        assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Service"} <= kinds
        assert "ServiceMonitor" not in kinds  # the base must work without the monitoring CRDs


def test_no_wildcards_in_rbac(cluster_kubectl: Kubectl) -> None:
    for path in KUSTOMIZATIONS:
        for doc in build(cluster_kubectl, path):
            for rule in doc.get("rules", []) if doc["kind"] in ("ClusterRole", "Role") else []:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], f"{path}: {doc['kind']} {rule}"


@pytest.mark.parametrize("path", ["overlays/dev", "overlays/single-namespace"])
def test_overlay_applies_server_side(path: str, cluster_kubectl: Kubectl, lepton_crds: None) -> None:
    """A server dry run of everything, once the overlay's namespaces exist (objects in them need them)."""
    namespaces = [doc for doc in build(cluster_kubectl, path) if doc["kind"] == "Namespace"]
    cluster_kubectl.apply(namespaces, "--server-side", "--force-conflicts")
    out = cluster_kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-k", str(MANIFESTS / path))
    assert "deployment.apps/lepton-operator serverside-applied (server dry run)" in out
    assert "role.rbac.authorization.k8s.io/lepton-operator serverside-applied" in out or path == "overlays/dev"


def test_base_applies_and_the_operator_pod_is_admitted_as_restricted(
    cluster_kubectl: Kubectl, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """lepton-system enforces Pod Security `restricted`; the operator's pods are created and run.

    The base takes over ``lepton-system``'s Deployment, so an in-cluster operator that ran there
    (this session's ``incluster_operator``, or the demo's) is installed again afterwards: the tests
    after this one still have it."""
    was_installed = incluster.installed(cluster_kubectl)
    # The operator image is not on the real node, so for this admission check the namespace's
    # pods are sent to kwok nodes (which pretend to run them) for the duration of the test.
    namespaces = [doc for doc in build(cluster_kubectl, "base") if doc["kind"] == "Namespace"]
    cluster_kubectl.apply(namespaces, "--server-side", "--force-conflicts")
    steering = config.kwok_namespace_annotations()
    cluster_kubectl("annotate", "--overwrite", "namespace", "lepton-system", *(f"{k}={v}" for k, v in steering.items()))
    result = cluster_kubectl.run("apply", "--server-side", "--force-conflicts", "-k", str(MANIFESTS / "base"))
    assert "PodSecurity" not in result.stderr, result.stderr
    system = cluster_kubectl.in_namespace("lepton-system")
    try:
        def both_running() -> list[dict[str, object]] | None:
            pods = system.get("pods", None, "-l", "app.kubernetes.io/name=lepton-operator")
            running = [p for p in pods if pod_phase(p) == "Running"]
            return running if len(running) == 2 else None

        pods = wait_until(both_running, 60, "both operator pods admitted and Running (kwok runs them)")
        context: dict[str, object] = pods[0]["spec"]["containers"][0]["securityContext"]  # type: ignore[index]
        assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
    finally:
        # kwok only pretends to run them; the e2e operator is the local process.
        system.delete("deployment", "lepton-operator", wait=True)
        cluster_kubectl("annotate", "namespace", "lepton-system", *(f"{k}-" for k in steering))
        if was_installed:
            incluster.install(cluster_kubectl, request.getfixturevalue("built_images"), tmp_path / "incluster-operator")
