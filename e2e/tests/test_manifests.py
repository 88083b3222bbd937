"""What users apply and read: the examples, `kubectl get lepton`, `kubectl explain`."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster.kube import Kubectl, condition, wait_until

EXAMPLES = sorted(path for path in (Path(__file__).resolve().parents[2] / "manifests" / "examples").glob("*.yaml")
                  if path.name != "kustomization.yaml")

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("lepton_crds")]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_is_accepted_by_the_api_server(example: Path, kubectl: Kubectl) -> None:
    out = kubectl("apply", "--server-side", "--dry-run=server", "-f", str(example))
    assert "serverside-applied (server dry run)" in out


@pytest.mark.usefixtures("lepton_operator")
def test_kubectl_get_lepton_lists_all_three_kinds_with_their_columns(kubectl: Kubectl) -> None:
    quickstart = next(path for path in EXAMPLES if path.name == "quickstart.yaml")
    kubectl("apply", "--server-side", "-f", str(quickstart))
    for kind, name in (("lds", "quickstart-images"), ("tj", "quickstart-train"), ("lis", "quickstart-serve")):
        wait_until(lambda: condition(kubectl.get(kind, name), "Ready"), 60, f"{kind}/{name} has a Ready condition")
    table = kubectl("get", "lepton")
    headers = [line.split() for line in table.splitlines() if line.startswith("NAME")]
    assert ["NAME", "PHASE", "READY", "RECORDS", "SHARDS", "BYTES", "AGE"] in headers
    assert ["NAME", "PHASE", "READY", "WORKERS", "ACTIVE", "RESTARTS", "STEP", "AGE"] in headers
    assert ["NAME", "PHASE", "READY", "REPLICAS", "AVAILABLE", "DESIRED", "MODEL", "AGE"] in headers
    for name in ("leptondataset.lepton.ai/quickstart-images", "trainingjob.lepton.ai/quickstart-train",
                 "inferenceservice.lepton.ai/quickstart-serve"):
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert row.split()[2] in ("True", "False"), row  # READY comes from the operator's condition
    wide = kubectl("get", "lds", "-o", "wide")
    assert "MODALITY" in wide and "http://quickstart-data:8080/records/" in wide


def test_kubectl_explain_shows_field_descriptions(kubectl: Kubectl) -> None:
    text = kubectl("explain", "trainingjob.spec.workers")
    assert "Elastic lower bound" in text
    assert "nprocPerNode" in text
    assert "Processes per worker pod" in kubectl("explain", "tj.spec.workers.nprocPerNode")
    assert "passed by reference" in kubectl("explain", "lis.spec.model.source.secretRef")
