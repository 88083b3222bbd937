"""LeptonDataset on a real API server, with the prepare pod simulated by kwok.

What is real: kube-apiserver (CRD schema, CEL), the Job controller (backoff,
podFailurePolicy), the PV controller binding the dataset's claim to a static
hostPath volume, the scheduler, and the operator process. What is simulated:
kwok nodes run no containers, so the prepare pod never runs the preparer on
the cluster. Instead each test runs the REAL preparer locally
(``lepton_workloads.prepare.main``) on generated data, and hands the result
document it wrote to kwok through the ``lepton.ai/kwok-termination-message``
pod annotation (set via ``spec.prepare.podAnnotations``); kwok's stage then
ends the pod with that text as its termination message and the chosen exit
code, exactly where the kubelet would put ``/dev/termination-log``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.config import TERMINATION_EXIT_CODE, TERMINATION_MESSAGE
from localcluster.kube import Kubectl, condition, wait_until
from lepton_workloads import prepare
from operator_fixtures import RunningOperator, metric_samples

pytestmark = pytest.mark.e2e

TIMEOUT = 120.0  # generous: the 2-core machine is shared, and one run under heavy load needed more
SOURCE = "https://data.example.com/lepton/text/corpus.tar"


def run_preparer(tmp_path: Path, name: str, *extra: str) -> tuple[int, str]:
    """Run the real preparer on 40 generated jsonl records; (exit code, result document text)."""
    source = tmp_path / f"{name}-source"
    source.mkdir()
    (source / "part.jsonl").write_text("".join(json.dumps({"id": i, "text": f"record {i}"}) + "\n" for i in range(40)))
    result = tmp_path / f"{name}-result"
    code = prepare.main(["--source", str(source / "part.jsonl"), "--modality", "text", "--shard-count", "4",
                         "--output", str(tmp_path / f"{name}-out"), "--result", str(result), *extra])  # fmt: skip
    return code, result.read_text()


@pytest.fixture
def storage_class(cluster_kubectl: Kubectl, namespace: str, tmp_path: Path) -> Iterator[str]:
    """A static hostPath PersistentVolume in a class of this test's own (no provisioner runs here)."""
    name = f"lepton-{namespace}"
    cluster_kubectl.apply({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": name,
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(tmp_path / "pv")}},
    })  # fmt: skip
    yield name
    cluster_kubectl.delete("persistentvolume", name)


def dataset(name: str, storage_class: str, annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"uri": SOURCE}, "modality": "text", "shards": {"count": 4},
        "storage": {"size": "1Gi", "storageClassName": storage_class},
        "prepare": {"backoffLimit": 0, "timeoutSeconds": 600, "podAnnotations": annotations},
    }  # fmt: skip
    body.update(spec)
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "LeptonDataset", "metadata": {"name": name}, "spec": body}


def status_when(kubectl: Kubectl, name: str, what: str, check: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
    def current() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl.get("lds", name)
        generation = obj["metadata"]["generation"]
        status = obj.get("status") or {}
        if status.get("observedGeneration") == generation and check(status):
            return obj
        summary = {c["type"]: (c["status"], c["reason"], c["message"][:200]) for c in status.get("conditions", [])}
        job_states = [(j["metadata"]["name"], j.get("status")) for j in jobs(kubectl, name)]
        raise LookupError(f"generation {generation}, phase {status.get('phase')}, {summary}, jobs {job_states}")

    found: dict[str, Any] = wait_until(current, timeout, f"LeptonDataset {name}: {what}")
    return found


def reason(status: dict[str, Any], ctype: str) -> tuple[str, str]:
    found = condition({"status": status}, ctype) or {}
    return found.get("status", ""), found.get("reason", "")


def jobs(kubectl: Kubectl, name: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = kubectl.get("jobs", None, "-l", f"lepton.ai/leptondataset={name}")
    return listed


def test_dataset_prepares_into_its_claim_and_reports_the_numbers(
    lepton_operator: RunningOperator, kubectl: Kubectl, storage_class: str, tmp_path: Path
) -> None:
    code, result = run_preparer(tmp_path, "ok")
    assert code == 0
    document = json.loads(result)
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "source-token"},
                   "stringData": {"bearer": "do-not-copy-me"}})  # fmt: skip
    kubectl.apply(dataset("corpus", storage_class, {TERMINATION_MESSAGE: result},
                          source={"uri": SOURCE, "secretRef": {"name": "source-token", "keys": {"token": "bearer"}}}),
                  "--server-side")  # fmt: skip

    obj = status_when(kubectl, "corpus", "Ready", lambda s: s.get("phase") == "Ready")
    # What Flux and scripts use: kstatus conditions make `kubectl wait` work as is.
    assert "condition met" in kubectl("wait", "--for=condition=Ready", "lds/corpus", "--timeout=30s")
    status = obj["status"]
    assert (status["records"], status["sizeBytes"], status["shards"]) == (40, document["bytes"], document["shards"])
    assert status["digest"] == document["digest"] and status["claimName"] == "corpus"
    assert status["progress"] == {"bytesDone": document["sourceBytes"], "bytesTotal": document["sourceBytes"]}
    assert {t: reason(status, t) for t in ("Validated", "Prepared", "Ready", "Reconciling", "Stalled")} == {
        "Validated": ("True", "Valid"), "Prepared": ("True", "Prepared"), "Ready": ("True", "Ready"),
        "Reconciling": ("False", "Prepared"), "Stalled": ("False", "Prepared"),
    }  # fmt: skip

    claim = kubectl.get("pvc", "corpus")
    assert claim["spec"]["storageClassName"] == storage_class and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["ownerReferences"][0]["name"] == "corpus"
    assert claim["status"]["phase"] == "Bound"
    [job] = jobs(kubectl, "corpus")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["python", "-m", "lepton_workloads.prepare"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "corpus"}} in pod["volumes"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LEPTON_SOURCE_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "source-token", "key": "bearer"}}
    assert env["LEPTON_SOURCE_URI"]["value"] == SOURCE and env["LEPTON_SHARD_COUNT"]["value"] == "4"
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (0, 600)
    # The credential is passed by reference only: no object the operator writes, no event, no log line holds it.
    written = kubectl.get("all,configmaps,persistentvolumeclaims,events,leptondatasets")
    assert written and "do-not-copy-me" not in json.dumps(written)
    log = lepton_operator.log_path.read_text()
    assert "-> Ready" in log and "do-not-copy-me" not in log

    samples = metric_samples(lepton_operator.metrics(), "lepton_dataset_records")
    assert samples[(("dataset", "corpus"), ("namespace", obj["metadata"]["namespace"]))] == 40

    # Metadata-only change: no new preparation, still Ready.
    kubectl("patch", "lds", "corpus", "--type=merge", "-p", json.dumps({"spec": {"prepare": {"backoffLimit": 2}}}))
    obj = status_when(kubectl, "corpus", "generation 2 observed", lambda s: s.get("phase") == "Ready")
    assert [j["metadata"]["uid"] for j in jobs(kubectl, "corpus")] == [job["metadata"]["uid"]]


def test_dataset_failed_preparation_gives_the_reason_and_recovers_when_fixed(
    lepton_operator: RunningOperator, kubectl: Kubectl, storage_class: str, tmp_path: Path
) -> None:
    wrong = "0" * 64
    code, failed = run_preparer(tmp_path, "bad", "--sha256", wrong)
    assert code == prepare.EXIT_PERMANENT and json.loads(failed)["reason"] == "ChecksumMismatch"
    kubectl.apply(dataset("corpus", storage_class, {TERMINATION_MESSAGE: failed, TERMINATION_EXIT_CODE: "3"},
                          verify={"sha256": wrong}), "--server-side")  # fmt: skip
    obj = status_when(kubectl, "corpus", "Failed", lambda s: s.get("phase") == "Failed")
    assert reason(obj["status"], "Prepared") == ("False", "ChecksumMismatch")
    assert reason(obj["status"], "Stalled") == ("True", "ChecksumMismatch")
    assert wrong in (condition(obj, "Ready") or {})["message"]
    [old] = jobs(kubectl, "corpus")
    assert condition(old, "Failed") is not None

    # The user fixes the expected checksum: a data-changing edit, so the old Job goes and a new
    # preparation runs; its pod now ends with the success document.
    source_sha = hashlib.sha256((tmp_path / "bad-source" / "part.jsonl").read_bytes()).hexdigest()
    code, result = run_preparer(tmp_path, "good", "--sha256", source_sha)
    assert code == 0
    annotations = {TERMINATION_MESSAGE: result, TERMINATION_EXIT_CODE: None}  # null: merge patch removes it
    fix = {"verify": {"sha256": source_sha}, "prepare": {"podAnnotations": annotations}}
    kubectl("patch", "lds", "corpus", "--type=merge", "-p", json.dumps({"spec": fix}))
    obj = status_when(kubectl, "corpus", "Ready after the fix", lambda s: s.get("phase") == "Ready")
    assert obj["status"]["records"] == 40 and reason(obj["status"], "Stalled") == ("False", "Prepared")
    assert [j["metadata"]["name"] for j in jobs(kubectl, "corpus")] != [old["metadata"]["name"]]


def test_dataset_missing_secret_is_a_reason_until_it_appears(
    lepton_operator: RunningOperator, kubectl: Kubectl, storage_class: str, tmp_path: Path
) -> None:
    _, result = run_preparer(tmp_path, "ok")
    source = {"uri": SOURCE, "secretRef": {"name": "late", "keys": {"token": "bearer"}}}
    kubectl.apply(dataset("corpus", storage_class, {TERMINATION_MESSAGE: result}, source=source), "--server-side")
    obj = status_when(kubectl, "corpus", "SecretNotFound", lambda s: reason(s, "Validated")[1] == "SecretNotFound")
    assert obj["status"]["phase"] == "Pending" and jobs(kubectl, "corpus") == []
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"}, "stringData": {"other": "x"}})
    obj = status_when(kubectl, "corpus", "SecretKeyMissing", lambda s: reason(s, "Validated")[1] == "SecretKeyMissing")
    assert "bearer" in (condition(obj, "Validated") or {})["message"]
    kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"}, "stringData": {"bearer": "t"}})
    obj = status_when(kubectl, "corpus", "Ready", lambda s: s.get("phase") == "Ready")
    assert reason(obj["status"], "Validated") == ("True", "Valid")


def test_dataset_admitted_but_invalid_spec_is_stalled_then_prepares(
    lepton_operator: RunningOperator, kubectl: Kubectl, storage_class: str, tmp_path: Path
) -> None:
    _, result = run_preparer(tmp_path, "ok")
    odd = dataset("corpus", storage_class, {TERMINATION_MESSAGE: result}, source={"uri": SOURCE + "\u00a0v2"})
    kubectl.apply(odd, "--server-side")  # RE2's \\S admits a no-break space, pydantic's does not
    obj = status_when(kubectl, "corpus", "InvalidSpec", lambda s: s.get("phase") == "Failed")
    assert reason(obj["status"], "Validated") == ("False", "InvalidSpec") and jobs(kubectl, "corpus") == []
    kubectl("patch", "lds", "corpus", "--type=merge", "-p", json.dumps({"spec": {"source": {"uri": SOURCE}}}))
    status_when(kubectl, "corpus", "Ready after the fix", lambda s: s.get("phase") == "Ready")


def test_dataset_deletion_removes_its_children_without_a_deadlock(
    lepton_operator: RunningOperator, kubectl: Kubectl, storage_class: str, tmp_path: Path
) -> None:
    _, result = run_preparer(tmp_path, "ok")
    kubectl.apply(dataset("corpus", storage_class, {TERMINATION_MESSAGE: result}), "--server-side")
    obj = status_when(kubectl, "corpus", "Ready", lambda s: s.get("phase") == "Ready")
    namespace = obj["metadata"]["namespace"]
    kubectl.delete("lds", "corpus")

    def gone() -> bool:
        return (kubectl.get_or_none("lds", "corpus") is None and kubectl.get_or_none("pvc", "corpus") is None
                and jobs(kubectl, "corpus") == [])  # fmt: skip

    wait_until(gone, TIMEOUT, "the dataset, its claim and its Job to be gone")
    wait_until(lambda: not metric_samples(lepton_operator.metrics(), "lepton_dataset_records").get(
        (("dataset", "corpus"), ("namespace", namespace))), TIMEOUT, "the dataset's gauges to go")  # fmt: skip


def test_dataset_waiting_for_storage_says_so(lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str) -> None:
    """No volume of the class exists (there is no provisioner here): the status names the claim."""
    kubectl.apply(dataset("corpus", f"absent-{namespace}", {}), "--server-side")
    obj = status_when(kubectl, "corpus", "ClaimPending", lambda s: reason(s, "Prepared")[1] == "ClaimPending")
    assert obj["status"]["phase"] == "Preparing"
    assert f"absent-{namespace}" in (condition(obj, "Prepared") or {})["message"]
