"""The operator on a real API server: it starts, writes honest status, exports metrics, peers.

Every test waits on a condition with a deadline; none sleeps. The tests that use the session
operator all start with ``test_operator_`` so their namespaces match the operator's namespace
globs (see ``operator_fixtures.namespace_patterns``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

import localcluster
from localcluster.kube import Kubectl, KubectlError, wait_until
# Fixtures come from conftest only: importing a session fixture here too would define a second one,
# a second operator under its own peering name, acting beside the first for the rest of the session.
from operator_fixtures import RunningOperator, delete_peering, http_get, metric_samples, run_operator

pytestmark = pytest.mark.e2e

STATUS_TIMEOUT = 45.0
KINDS = ("LeptonDataset", "TrainingJob", "InferenceService")
#: Kinds whose generic status checks live here. LeptonDataset and InferenceService have their own
#: controllers now, and e2e/tests/test_dataset.py / test_inference.py check the same (valid
#: object tracked per generation, admitted-but-invalid object Stalled then recovered) for them.
GENERIC_KINDS = ("TrainingJob",)
SHORT = {"LeptonDataset": "lds", "TrainingJob": "tj", "InferenceService": "lis"}
VALID: dict[str, dict[str, Any]] = {
    "LeptonDataset": {"source": {"uri": "https://data.example.com/lepton/images.tar"}, "modality": "image"},
    # Waits for a dataset that never comes, so its status stays put (Pending) while the test looks.
    "TrainingJob": {"image": "ghcr.io/example/trainer:1", "workers": {"replicas": 2}, "dataset": {"name": "images"}},
    "InferenceService": {"model": {"name": "resnet", "source": {"uri": "s3://models/resnet/"}}},
}
# A change of each valid spec that bumps metadata.generation.
CHANGED: dict[str, dict[str, Any]] = {
    "LeptonDataset": {"modality": "multimodal"},
    "TrainingJob": {"workers": {"replicas": 3}},
    "InferenceService": {"replicas": 2},
}
# Objects the API server admits but the operator's models refuse: the CRD's regular expressions
# run on Go's RE2, where \S is "not ASCII whitespace", while pydantic's \S also excludes Unicode
# spaces. A no-break space (U+00A0) in a path or URI is the real gap this exercises.
NBSP = "\u00a0"
ADMITTED_BUT_INVALID: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "LeptonDataset": (
        {"source": {"uri": f"https://data.example.com/lepton/images{NBSP}v2.tar"}, "modality": "image"},
        "spec.source.uri",
        {"source": {"uri": "https://data.example.com/lepton/images-v2.tar"}},
    ),
    "TrainingJob": (
        {"image": "ghcr.io/example/trainer:1", "dataset": {"name": "images", "mountPath": f"/data{NBSP}set"}},
        "spec.dataset.mountPath",
        {"dataset": {"name": "images", "mountPath": "/dataset"}},
    ),
    "InferenceService": (
        {"model": {"name": "resnet", "source": {"uri": f"s3://models/res{NBSP}net/"}}},
        "spec.model.source.uri",
        {"model": {"name": "resnet", "source": {"uri": "s3://models/resnet/"}}},
    ),
}


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def merge_patch(kubectl: Kubectl, kind: str, name: str, spec: dict[str, Any]) -> None:
    kubectl("patch", SHORT[kind], name, "--type=merge", "-p", json.dumps({"spec": spec}))


def observed(
    kubectl: Kubectl, kind: str, name: str, generation: int | None = None, timeout: float = STATUS_TIMEOUT
) -> dict[str, Any]:
    """The object once its status describes its current (or the given) generation."""

    def current() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl.get(SHORT[kind], name)
        want = obj["metadata"]["generation"] if generation is None else generation
        if obj["metadata"]["generation"] == want and obj.get("status", {}).get("observedGeneration") == want:
            return obj
        return None

    result: dict[str, Any] = wait_until(current, timeout, f"{kind}/{name} status for its generation")
    return result


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


def assert_conditions(obj: dict[str, Any], expected: dict[str, tuple[str, str]]) -> None:
    generation = obj["metadata"]["generation"]
    conditions = conditions_of(obj)
    assert {t: (conditions[t]["status"], conditions[t]["reason"]) for t in expected} == expected
    for cond in conditions.values():
        assert cond["observedGeneration"] == generation, cond
        assert cond["lastTransitionTime"], cond


PENDING = {
    "Validated": ("True", "Valid"),
    "Ready": ("False", "Pending"),
    "Reconciling": ("True", "Pending"),
    "Stalled": ("False", "Valid"),
}
# A valid TrainingJob waits for its (absent) dataset; the other kinds wait for their controller.
WAITING_FOR_DATASET = {
    "Validated": ("True", "Valid"),
    "Ready": ("False", "DatasetNotReady"),
    "Reconciling": ("True", "DatasetNotReady"),
    "Stalled": ("False", "DatasetNotReady"),
}
WAITING = {kind: WAITING_FOR_DATASET if kind == "TrainingJob" else PENDING for kind in KINDS}
WAITING_FOR = {kind: "LeptonDataset images" if kind == "TrainingJob" else kind for kind in KINDS}
INVALID = {
    "Validated": ("False", "InvalidSpec"),
    "Ready": ("False", "InvalidSpec"),
    "Reconciling": ("False", "InvalidSpec"),
    "Stalled": ("True", "InvalidSpec"),
}


def test_operator_answers_healthz_and_metrics(lepton_operator: RunningOperator) -> None:
    assert http_get(lepton_operator.health_url)[0] == 200
    status, text = http_get(lepton_operator.metrics_url)
    assert status == 200
    assert "# TYPE lepton_reconcile_seconds histogram" in text
    counts = metric_samples(text, "lepton_reconcile_seconds_count")
    assert {dict(labels)["kind"] for labels in counts} == set(KINDS)


@pytest.mark.parametrize("kind", GENERIC_KINDS)
def test_operator_valid_object_gets_status_for_each_generation(
    kind: str, lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    kubectl.apply(manifest(kind, "ok", VALID[kind]), "--server-side")
    obj = observed(kubectl, kind, "ok")
    assert obj["status"]["phase"] == "Pending"
    assert_conditions(obj, WAITING[kind])
    assert WAITING_FOR[kind] in conditions_of(obj)["Ready"]["message"]
    first_transition = conditions_of(obj)["Ready"]["lastTransitionTime"]

    merge_patch(kubectl, kind, "ok", CHANGED[kind])
    obj = observed(kubectl, kind, "ok", generation=2)
    assert_conditions(obj, WAITING[kind])
    assert conditions_of(obj)["Ready"]["lastTransitionTime"] == first_transition  # still False: no transition

    # The loops are level-based, so kopf keeps no bookkeeping on the object: no
    # diff-base copy of the spec (kopf #1087's annotation limit cannot bite), and
    # nothing in the (pruned) status.
    annotations = obj["metadata"].get("annotations", {})
    assert not [key for key in annotations if key.startswith(("kopf.zalando.org", "lepton.ai/"))]
    assert "kopf" not in obj["status"]
    # No finalizer either: a stopped operator never blocks a deletion (or a namespace's).
    assert not obj["metadata"].get("finalizers")


@pytest.mark.parametrize("kind", GENERIC_KINDS)
def test_operator_admitted_but_invalid_object_is_stalled_then_recovers(
    kind: str, lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    spec, field, fix = ADMITTED_BUT_INVALID[kind]
    try:
        kubectl.apply(manifest(kind, "odd", spec), "--server-side")
    except KubectlError as refused:
        pytest.fail(f"the API server now refuses the no-break space; pick another gap: {refused.stderr}")
    obj = observed(kubectl, kind, "odd")
    assert obj["status"]["phase"] == "Failed"
    assert_conditions(obj, INVALID)
    message = conditions_of(obj)["Validated"]["message"]
    assert message.startswith(f"{field}: String should match pattern"), message

    def warning_event() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = kubectl.get("events", None, "--field-selector",
                                                   "involvedObject.name=odd,reason=InvalidSpec")  # fmt: skip
        return [e for e in events if e["type"] == "Warning" and field in e["message"]]

    wait_until(warning_event, STATUS_TIMEOUT, f"a Warning event InvalidSpec on {kind}/odd")

    merge_patch(kubectl, kind, "odd", fix)
    obj = observed(kubectl, kind, "odd", generation=2)
    assert obj["status"]["phase"] == "Pending"  # Failed is recomputed, not one-way
    assert_conditions(obj, WAITING[kind])


def test_operator_metrics_count_reconciles_of_every_kind(lepton_operator: RunningOperator, kubectl: Kubectl) -> None:
    before = lepton_operator.reconcile_counts()
    for kind in KINDS:
        kubectl.apply(manifest(kind, "counted", VALID[kind]), "--server-side")
    for kind in KINDS:
        observed(kubectl, kind, "counted")
    after = lepton_operator.reconcile_counts()
    for kind in KINDS:
        assert after[kind] >= before.get(kind, 0) + 1, (kind, before, after)
    outcomes = metric_samples(lepton_operator.metrics(), "lepton_reconcile_total")
    accepted = {dict(labels)["kind"]: value for labels, value in outcomes.items() if dict(labels)["outcome"] == "accepted"}
    assert all(accepted[kind] >= 1 for kind in KINDS), accepted


def test_second_operator_with_lower_priority_stays_idle_until_the_first_stops(
    cluster: localcluster.Cluster,
    cluster_kubectl: Kubectl,
    lepton_crds: None,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
) -> None:
    """Two replicas with one peering name: only the higher priority acts; the other takes over."""
    peering = f"lepton-e2e-peer-{uuid.uuid4().hex[:8]}"
    first = run_operator(cluster.kubeconfig, tmp_path / "first.log", peering_name=peering,
                         namespaces=[namespace], priority=20)  # fmt: skip
    second: RunningOperator | None = None
    try:
        second = run_operator(cluster.kubeconfig, tmp_path / "second.log", peering_name=peering,
                              namespaces=[namespace], priority=10)  # fmt: skip

        def both_peered() -> bool:
            peers = cluster_kubectl.get("clusterkopfpeering", peering).get("status", {})
            return sorted(p["priority"] for p in peers.values()) == [10, 20]

        wait_until(both_peered, STATUS_TIMEOUT, "both operators in the peering object")

        kind = "TrainingJob"
        kubectl.apply(manifest(kind, "job", VALID[kind]), "--server-side")
        observed(kubectl, kind, "job")
        merge_patch(kubectl, kind, "job", CHANGED[kind])
        observed(kubectl, kind, "job", generation=2)
        assert first.reconcile_counts()[kind] >= 2
        assert sum(second.reconcile_counts().values()) == 0, second.process.log_tail()

        first.process.stop()
        kubectl.apply(manifest(kind, "later", VALID[kind]), "--server-side")
        # Only the second one is left to write it: at once after the first's goodbye, at worst
        # once the first's keep-alive expires (PEERING_LIFETIME).
        observed(kubectl, kind, "later", timeout=90)
        assert second.reconcile_counts()[kind] >= 1
        assert "Resuming operations after the pause" in second.log_path.read_text()
    except BaseException:
        for name, running in (("first", first), ("second", second)):
            if running is not None:
                print(f"\n--- {name} operator log ---\n{running.process.log_tail()}")
        raise
    finally:
        first.process.stop()
        if second is not None:
            second.process.stop()
        delete_peering(cluster_kubectl, peering)

