"""The LeptonDataset reconciler against an in-memory stand-in for ``controllers.kube`` (``fake_kube``).

The real API server path is covered by e2e/tests/test_dataset.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import kopf
import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError

from fake_kube import FakeKube, fake  # noqa: F401 - the fixture
from lepton_operator import metrics
from lepton_operator.api.dataset import LeptonDatasetSpec
from lepton_operator.controllers import dataset as controller
from lepton_operator.controllers import kube, network, secrets
from lepton_operator.controllers.progress import ProgressPoller
from lepton_operator.controllers.wakeups import ObjectKey, Wakeups
from lepton_operator.render import dataset as render
from lepton_workloads import progress_server


def body(spec: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "d", "uid": "u1", "generation": generation},
            "spec": spec, "status": status or {}}  # fmt: skip


SPEC = {"source": {"uri": "https://h/x/", "secretRef": {"name": "creds", "keys": {"token": "tok"}}}, "modality": "text"}


def run(obj: dict[str, Any]) -> tuple[dict[str, Any], float | None, list[tuple[str, str]]]:
    patch: dict[str, Any] = {}
    warnings: list[tuple[str, str]] = []
    due = controller.reconcile_dataset(
        obj, patch, retry=0, logger=logging.getLogger("test"), warn=lambda r, m: warnings.append((r, m))
    )
    return patch, due, warnings


def test_missing_secret_then_missing_key_then_job(fake: FakeKube) -> None:
    patch, due, warnings = run(body(SPEC))
    assert patch["phase"] == "Pending" and due == secrets.FIRST_RECHECK_SECONDS
    assert warnings[0][0] == "SecretNotFound"
    assert ("PersistentVolumeClaim", "ns", "d") in fake.objects
    assert not [k for k in fake.objects if k[0] == "Job"]
    fake.objects[("Secret", "ns", "creds")] = {"metadata": {"name": "creds"}, "data": {"other": "eA=="}}
    patch, _, _ = run(body(SPEC, patch))
    ready = next(c for c in patch["conditions"] if c["type"] == "Validated")
    assert ready["reason"] == "SecretKeyMissing" and "tok" in ready["message"] and "eA==" not in str(patch)
    fake.objects[("Secret", "ns", "creds")]["data"]["tok"] = "c2VjcmV0"
    patch, due, _ = run(body(SPEC, patch))
    assert patch["phase"] == "Preparing" and due is None
    [job] = [o for k, o in fake.objects.items() if k[0] == "Job"]
    assert "c2VjcmV0" not in str(job)
    token = next(e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "LEPTON_SOURCE_TOKEN")
    assert token == {"name": "LEPTON_SOURCE_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "tok"}}}


def test_a_source_ca_bundle_configmap_and_key_are_waited_for_before_the_job(fake: FakeKube) -> None:
    spec = {"source": {"uri": "https://data.corp/x/", "caBundle": {"configMapRef": {"name": "corp-ca", "key": "bundle.pem"}}},
            "modality": "text"}  # fmt: skip
    patch, due, warnings = run(body(spec))
    validated = next(c for c in patch["conditions"] if c["type"] == "Validated")
    assert (patch["phase"], validated["reason"], due) == ("Pending", "ConfigMapNotFound", secrets.FIRST_RECHECK_SECONDS)
    assert warnings == [("ConfigMapNotFound", "caBundle: ConfigMap corp-ca not found in namespace ns")]
    assert not [k for k in fake.objects if k[0] == "Job"]
    fake.objects[("ConfigMap", "ns", "corp-ca")] = {"metadata": {"name": "corp-ca"}, "data": {"bundle.pem": ""}}
    patch, due, warnings = run(body(spec, patch))
    assert warnings[0] == ("ConfigMapKeyMissing", "caBundle: ConfigMap corp-ca has no non-empty key bundle.pem")
    assert not [k for k in fake.objects if k[0] == "Job"] and due is not None
    fake.objects[("ConfigMap", "ns", "corp-ca")]["data"]["bundle.pem"] = "-----BEGIN CERTIFICATE-----"
    patch, due, _ = run(body(spec, patch))
    assert patch["phase"] == "Preparing" and due is None
    [job] = [o for k, o in fake.objects.items() if k[0] == "Job"]
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "source-ca", "configMap": {"name": "corp-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}} in volumes


def test_data_change_replaces_the_job_after_the_old_one_is_gone(fake: FakeKube) -> None:
    spec = {"source": {"uri": "https://h/x/"}, "modality": "text"}
    run(body(spec))
    [old] = [name for kind, _, name in fake.objects if kind == "Job"]
    changed = {**spec, "splits": {"seed": 5}}
    _, due, _ = run(body(changed, generation=2))
    assert fake.deleted == [old] and due == controller.STALE_JOB_RECHECK_SECONDS
    assert [name for kind, _, name in fake.objects if kind == "Job"] == [old]  # still terminating: not replaced yet
    run(body(changed, generation=2))
    assert fake.deleted == [old]  # asked once, not again while it terminates
    del fake.objects[("Job", "ns", old)]
    patch, _, _ = run(body(changed, generation=2))
    [new] = [name for kind, _, name in fake.objects if kind == "Job"]
    assert new != old and new.endswith(render.data_hash(LeptonDatasetSpec.model_validate(changed)))
    assert patch["phase"] == "Preparing"


def test_metadata_only_change_keeps_the_job(fake: FakeKube) -> None:
    spec = {"source": {"uri": "https://h/x/"}, "modality": "text"}
    run(body(spec))
    jobs = [k for k in fake.objects if k[0] == "Job"]
    run(body({**spec, "storage": {"size": "20Gi"}, "prepare": {"backoffLimit": 1}}, generation=2))
    assert [k for k in fake.objects if k[0] == "Job"] == jobs and fake.deleted == []


def test_ready_exports_metrics(fake: FakeKube) -> None:
    spec = {"source": {"uri": "https://h/x/"}, "modality": "text"}
    run(body(spec))
    [(key, job)] = [(k, o) for k, o in fake.objects.items() if k[0] == "Job"]
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "startTime": "2026-01-01T00:00:00Z",
                     "completionTime": "2026-01-01T00:00:30Z"}  # fmt: skip
    message = ('{"schema":"lepton.ai/prepare-result/v1","ok":true,"records":7,"bytes":1024,"shards":1,'
               '"digest":"sha256:ab","sourceBytes":10}')  # fmt: skip
    fake.objects[("Pod", "ns", "p")] = {
        "metadata": {"name": "p", "labels": {controller.JOB_NAME_LABEL: key[2]}, "creationTimestamp": "x"},
        "status": {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"message": message}}}]},
    }
    before = metrics.REGISTRY.get_sample_value("lepton_dataset_preparation_seconds_count") or 0
    patch, _, _ = run(body(spec, {"phase": "Preparing"}))
    assert patch["phase"] == "Ready" and patch["records"] == 7
    assert metrics.REGISTRY.get_sample_value("lepton_dataset_records", {"namespace": "ns", "dataset": "d"}) == 7
    assert metrics.REGISTRY.get_sample_value("lepton_dataset_bytes", {"namespace": "ns", "dataset": "d"}) == 1024
    assert metrics.REGISTRY.get_sample_value("lepton_dataset_preparation_seconds_count") == before + 1
    asyncio.run(controller.forget_deleted({"metadata": {"namespace": "ns", "name": "d"}}, "DELETED"))
    assert metrics.REGISTRY.get_sample_value("lepton_dataset_records", {"namespace": "ns", "dataset": "d"}) is None


def test_invalid_spec_is_reported_and_creates_nothing(fake: FakeKube) -> None:
    patch, due, warnings = run(body({"source": {"uri": "ftp://x/y"}, "modality": "text"}))
    assert patch["phase"] == "Failed" and warnings and due is None and fake.objects == {}


def test_refused_claim_resize_is_a_warning_not_a_failed_pass(fake: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"source": {"uri": "https://h/x/"}, "modality": "text"}
    run(body(spec))

    def refuse(manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "PersistentVolumeClaim":
            raise DynamicApiError(ApiException(status=403, reason="only dynamically provisioned pvc can be resized"))
        return fake.apply(manifest)

    monkeypatch.setattr(kube, "apply", refuse)
    patch, _, warnings = run(body({**spec, "storage": {"size": "20Gi"}}, generation=2))
    assert patch["phase"] == "Preparing"
    assert [reason for reason, _ in warnings] == ["ClaimResizeRefused"]


def test_running_preparers_live_progress_reaches_status_and_metrics(fake: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    server = progress_server.start(0, host="127.0.0.1")
    assert server is not None
    poller = ProgressPoller(Wakeups(), interval=0)
    monkeypatch.setattr(controller, "PROGRESS", poller)
    spec = {"source": {"uri": "https://h/x/"}, "modality": "text"}
    patch, _, _ = run(body(spec))
    [(key, job)] = [(k, o) for k, o in fake.objects.items() if k[0] == "Job"]
    template = job["spec"]["template"]["spec"]
    template["containers"][0]["ports"][0]["containerPort"] = server.port  # the preparer's endpoint, here
    fake.objects[("Pod", "ns", "p")] = {
        "metadata": {"name": "p", "uid": "pod-1", "labels": {controller.JOB_NAME_LABEL: key[2]}, "creationTimestamp": "x"},
        "spec": template, "status": {"phase": "Running", "podIP": "127.0.0.1"},
    }  # fmt: skip
    done = {"namespace": "ns", "dataset": "d", "state": "done"}
    try:
        status = {**patch}
        patch, _, _ = run(body(spec, status))
        assert status["phase"] == "Preparing" and patch == {}  # nothing reported yet
        server.publish({"schema": "lepton.ai/prepare-progress/v1", "stage": "fetching", "bytesDone": 100,
                        "bytesTotal": 400, "records": 0})  # fmt: skip
        assert asyncio.run(poll(poller)) == [("LeptonDataset", "ns", "d")]
        patch, _, _ = run(body(spec, status))
        assert patch["progress"] == {"bytesDone": 100, "bytesTotal": 400}
        assert metrics.REGISTRY.get_sample_value("lepton_dataset_progress_bytes", done) == 100
        assert metrics.REGISTRY.get_sample_value("lepton_dataset_progress_bytes", {**done, "state": "total"}) == 400
    finally:
        server.close()
    assert asyncio.run(poll(poller)) == []  # the endpoint is gone: unknown
    status = {**status, **patch}
    patch, _, _ = run(body(spec, status))
    assert patch == {} and status["progress"] == {"bytesDone": 100, "bytesTotal": 400}  # kept, nothing written
    asyncio.run(controller.forget_deleted({"metadata": {"namespace": "ns", "name": "d"}}, "DELETED"))
    assert metrics.REGISTRY.get_sample_value("lepton_dataset_progress_bytes", done) is None


async def poll(poller: ProgressPoller) -> list[ObjectKey]:
    async with aiohttp.ClientSession() as session:
        return await poller.poll(session)


OPEN_SOURCE = {"source": {"uri": "https://h/x/"}, "modality": "text"}


def test_prepare_pods_are_isolated_before_their_job_exists_and_the_policy_goes_when_disabled(fake: FakeKube) -> None:
    run(body(OPEN_SOURCE))
    kinds = [kind for kind, _, _ in fake.objects]
    assert kinds.index("NetworkPolicy") < kinds.index("Job")
    policy = fake.objects[("NetworkPolicy", "ns", "d-prepare")]
    assert policy["spec"]["podSelector"]["matchLabels"]["lepton.ai/role"] == "prepare"
    disabled = {**OPEN_SOURCE, "networkPolicy": {"enabled": False}}
    run(body(disabled, {"observedGeneration": 1}, generation=2))
    assert fake.deleted == ["d-prepare"]
    run(body(disabled, {"observedGeneration": 2}, generation=2))
    assert fake.deleted == ["d-prepare"]  # once, by the pass that first saw the generation


def test_a_refused_policy_fails_the_pass_before_any_job(fake: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pods are never created without their isolation: the pass is retried with a ReconcileError instead."""
    applied = kube.apply

    def refuse_policies(manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "NetworkPolicy":
            raise RuntimeError("networkpolicies is forbidden")
        return applied(manifest)

    monkeypatch.setattr(kube, "apply", refuse_policies)
    patch: dict[str, Any] = {}
    with pytest.raises(kopf.TemporaryError):
        controller.reconcile_dataset(body(OPEN_SOURCE), patch, retry=0, logger=logging.getLogger("test"), warn=lambda r, m: None)
    assert not [key for key in fake.objects if key[0] == "Job"]
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ReconcileError" and "forbidden" in ready["message"]
    monkeypatch.setattr(kube, "apply", applied)
    run(body(OPEN_SOURCE))  # the retry writes the policy it could not write before
    assert ("NetworkPolicy", "ns", "d-prepare") in fake.objects and [key for key in fake.objects if key[0] == "Job"]


def test_a_claim_the_api_server_refuses_as_invalid_is_terminal_and_no_job_is_made(
    fake: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #19: a 70-character dataset stored before its name rule made a 64-byte label, retried forever."""
    refused = 'PersistentVolumeClaim "d" is invalid: metadata.labels: Invalid value: "d": must be no more than 63 characters'

    def refuse(manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "PersistentVolumeClaim":
            error = ApiException(status=422, reason="Unprocessable Entity")
            error.body = json.dumps({"kind": "Status", "reason": "Invalid", "code": 422, "message": refused})
            raise DynamicApiError(error)
        return fake.apply(manifest)

    monkeypatch.setattr(kube, "apply", refuse)
    patch: dict[str, Any] = {}
    warnings: list[tuple[str, str]] = []
    with pytest.raises(kopf.PermanentError):
        controller.reconcile_dataset(body(OPEN_SOURCE), patch, retry=3, logger=logging.getLogger("test"),
                                     warn=lambda r, m: warnings.append((r, m)))  # fmt: skip
    stalled = next(c for c in patch["conditions"] if c["type"] == "Stalled")
    assert patch["phase"] == "Failed" and (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert refused in stalled["message"] and [reason for reason, _ in warnings] == ["InvalidSpec"]
    assert not [key for key in fake.objects if key[0] == "Job"]


def test_a_pass_in_flight_when_its_dataset_is_deleted_does_not_bring_its_gauges_back(fake: FakeKube) -> None:
    """The pass runs in a thread the deletion does not stop; its late record must not resurrect the series."""
    ready = {"phase": "Ready", "sizeBytes": 2048, "records": 9}
    controller._record_metrics("ns", "late", "uid-late", {"phase": "Ready"}, ready)
    assert metrics.REGISTRY.get_sample_value("lepton_dataset_records", {"namespace": "ns", "dataset": "late"}) == 9
    asyncio.run(controller.forget_deleted({"metadata": {"namespace": "ns", "name": "late", "uid": "uid-late"}},
                                          "DELETED"))  # fmt: skip
    controller._record_metrics("ns", "late", "uid-late", {"phase": "Ready"}, ready)  # the pass ends after
    assert metrics.REGISTRY.get_sample_value("lepton_dataset_records", {"namespace": "ns", "dataset": "late"}) is None
    controller._record_metrics("ns", "late", "uid-again", {}, {**ready, "records": 3})  # made again, same name
    assert metrics.REGISTRY.get_sample_value("lepton_dataset_records", {"namespace": "ns", "dataset": "late"}) == 3
