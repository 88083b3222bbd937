"""The InferenceService reconciler's Secret check against the in-memory ``controllers.kube`` (``fake_kube``).

The real API server path (admission, the operator process, events, logs) is
covered by e2e/tests/test_inference.py.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from fake_kube import FakeKube, fake  # noqa: F401 - the fixture
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.controllers import config, network
from lepton_operator.controllers import inference as controller
from lepton_operator.controllers import secrets
from lepton_operator.controllers.secret_versions import SECRET_VERSIONS
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.render.inference import SECRET_VERSIONS_ANNOTATION
from lepton_operator.render.network import NetworkContext

SPEC: dict[str, Any] = {
    "model": {
        "name": "resnet",
        "source": {"uri": "s3://models/exports/", "endpoint": "http://minio:9000",
                   "secretRef": {"name": "keys", "keys": {"accessKeyId": "id", "secretAccessKey": "secret"}}},
    },
}  # fmt: skip


def body(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "serve", "uid": "u1", "generation": 1},
            "spec": SPEC, "status": status or {}}  # fmt: skip


def run(status: dict[str, Any] | None = None) -> tuple[dict[str, Any], float | None, list[tuple[str, str]]]:
    patch: dict[str, Any] = {}
    warnings: list[tuple[str, str]] = []
    due = controller.reconcile_service(
        body(status), patch, retry=0, logger=logging.getLogger("test"), warn=lambda r, m: warnings.append((r, m))
    )
    return patch, due, warnings


def model_available(patch: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in patch["conditions"] if c["type"] == "ModelAvailable")
    return found


def test_uri_source_waits_for_its_secret_and_keys_then_stages_with_references(fake: FakeKube) -> None:
    patch, due, warnings = run()
    condition = model_available(patch)
    assert (patch["phase"], condition["status"], condition["reason"]) == ("Pending", "False", "SecretNotFound")
    assert condition["message"] == "Secret keys not found in namespace ns"
    assert warnings == [("SecretNotFound", "Secret keys not found in namespace ns")] and due == secrets.FIRST_RECHECK_SECONDS
    assert not [key for key in fake.objects if key[0] == "Deployment"]
    _, due, warnings = run(patch)  # nothing changed: the same status, no second event
    assert warnings == [] and due == secrets.FIRST_RECHECK_SECONDS

    fake.objects[("Secret", "ns", "keys")] = {"metadata": {"name": "keys"}, "data": {"id": "aWQtdmFsdWU="}}
    patch, due, warnings = run(patch)
    assert model_available(patch)["reason"] == "SecretKeyMissing" and "secret" in model_available(patch)["message"]
    assert warnings[0][0] == "SecretKeyMissing" and "aWQtdmFsdWU=" not in json.dumps(patch)

    fake.objects[("Secret", "ns", "keys")]["data"]["secret"] = "c2VjcmV0LXZhbHVl"
    patch, due, warnings = run(patch)
    assert (patch["phase"], model_available(patch)["status"], due, warnings) == ("Progressing", "True", None, [])
    deployment = fake.objects[("Deployment", "ns", "serve")]
    [stager] = deployment["spec"]["template"]["spec"]["initContainers"]
    env = {item["name"]: item for item in stager["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "keys", "key": "secret"}}
    assert env["LEPTON_S3_ENDPOINT"]["value"] == "http://minio:9000"
    assert "c2VjcmV0LXZhbHVl" not in json.dumps(deployment) and "aWQtdmFsdWU=" not in json.dumps(deployment)


def test_a_uri_source_waits_for_its_ca_bundle_configmap_and_key_then_stages_with_it_mounted(fake: FakeKube) -> None:
    spec = {"model": {"name": "resnet", "source": {"uri": "https://models.corp/resnet/",
                                                    "caBundle": {"configMapRef": {"name": "corp-ca"}}}}}  # fmt: skip

    def reconcile(status: dict[str, Any]) -> tuple[dict[str, Any], float | None, list[tuple[str, str]]]:
        patch: dict[str, Any] = {}
        warnings: list[tuple[str, str]] = []
        obj = {"metadata": {"namespace": "ns", "name": "serve", "uid": "u1", "generation": 1}, "spec": spec, "status": status}
        due = controller.reconcile_service(obj, patch, retry=0, logger=logging.getLogger("test"),
                                           warn=lambda r, m: warnings.append((r, m)))  # fmt: skip
        return patch, due, warnings

    patch, due, warnings = reconcile({})
    condition = model_available(patch)
    assert (patch["phase"], condition["reason"]) == ("Pending", "ConfigMapNotFound") and due == secrets.FIRST_RECHECK_SECONDS
    assert warnings == [("ConfigMapNotFound", "caBundle: ConfigMap corp-ca not found in namespace ns")]
    assert not [key for key in fake.objects if key[0] == "Deployment"]
    _, _, warnings = reconcile(patch)
    assert warnings == []  # the same status: no second event

    fake.objects[("ConfigMap", "ns", "corp-ca")] = {"metadata": {"name": "corp-ca"}, "data": {"ca-bundle.crt": "PEM"}}
    patch, due, warnings = reconcile(patch)
    assert model_available(patch)["reason"] == "ConfigMapKeyMissing" and warnings[0][0] == "ConfigMapKeyMissing"
    assert not [key for key in fake.objects if key[0] == "Deployment"]

    fake.objects[("ConfigMap", "ns", "corp-ca")]["data"]["ca.crt"] = "-----BEGIN CERTIFICATE-----"
    patch, due, warnings = reconcile(patch)
    assert (patch["phase"], model_available(patch)["status"], due, warnings) == ("Progressing", "True", None, [])
    [stager] = fake.objects[("Deployment", "ns", "serve")]["spec"]["template"]["spec"]["initContainers"]
    assert {"name": "LEPTON_SOURCE_CA_FILE", "value": "/lepton/source-ca/corp-ca/ca.crt"} in stager["env"]


def test_scale_to_zero_services_get_an_activator_in_front_once_ready_and_lose_it_when_min_replicas_rises(
    fake: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.ACTIVATOR_IMAGE_ENV, "localhost/lepton-operator:test")
    raw: dict[str, Any] = {"model": {"name": "m", "source": {"claim": {"name": "models", "path": "m"}}},
                           "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "target": 1, "scaleToZeroAfterSeconds": 60}}  # fmt: skip

    def converge(generation: int, observed: int | None) -> None:
        body = {"metadata": {"namespace": "ns", "name": "serve", "uid": "u1", "generation": generation},
                "spec": raw, "status": {"observedGeneration": observed} if observed else {}}  # fmt: skip
        controller.converge(body, InferenceServiceSpec.model_validate(raw), datetime.now(UTC))

    def public_role() -> str:
        role: str = fake.objects[("Service", "ns", "serve")]["spec"]["selector"]["lepton.ai/role"]
        return role

    converge(1, None)
    activator = fake.objects[("Deployment", "ns", "serve-activator")]
    assert activator["spec"]["template"]["spec"]["containers"][0]["image"] == "localhost/lepton-operator:test"
    assert fake.objects[("Service", "ns", "serve-triton")]["spec"]["selector"]["lepton.ai/role"] == "server"
    assert public_role() == "server"  # the activator is not ready yet
    assert fake.deleted == []

    activator["status"] = {"readyReplicas": 1}
    converge(1, 1)
    assert public_role() == "activator"

    raw["autoscaling"]["minReplicas"] = 1
    del raw["autoscaling"]["scaleToZeroAfterSeconds"]
    converge(2, 1)
    assert public_role() == "server"
    assert fake.deleted == ["serve-activator", "serve-triton"]
    converge(2, 2)  # steady passes delete nothing more
    assert fake.deleted == ["serve-activator", "serve-triton"]


KEY_VALUE, CERT_B64 = "c3VwZXItc2VjcmV0LWtleQ==", "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"
SECURED: dict[str, Any] = {"model": {"name": "m", "source": {"claim": {"name": "models", "path": "m"}}},
                           "auth": {"apiKeySecretRef": {"name": "m-key"}},
                           "tls": {"secretName": "m-tls", "mutual": True}}  # fmt: skip


def test_a_secured_service_waits_for_its_key_and_tls_secrets_and_never_copies_their_values(
    fake: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    written: list[Any] = []

    def secured(status: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, list[tuple[str, str]]]:
        patch: dict[str, Any] = {}
        warnings: list[tuple[str, str]] = []
        due = controller.reconcile_service(
            {"metadata": {"namespace": "ns", "name": "m", "uid": "u1", "generation": 1}, "spec": SECURED, "status": status},
            patch, retry=0, logger=logging.getLogger("test"), warn=lambda r, m: warnings.append((r, m)),
        )  # fmt: skip
        written.extend([patch, warnings])
        assert (due is None) == (model_available(patch)["status"] == "True")
        return patch, fake.objects.get(("Deployment", "ns", "m")), warnings

    def expect(patch: dict[str, Any], reason: str, message: str) -> None:
        assert (model_available(patch)["reason"], model_available(patch)["message"]) == (reason, message)

    patch, deployment, warnings = secured({})
    expect(patch, "SecretNotFound", "auth.apiKeySecretRef: Secret m-key not found in namespace ns")
    assert deployment is None and warnings == [("SecretNotFound", model_available(patch)["message"])]

    fake.objects[("Secret", "ns", "m-key")] = {"metadata": {"name": "m-key"}, "type": "Opaque", "data": {"apiKey": ""}}
    patch, deployment, _ = secured(patch)
    expect(patch, "SecretKeyMissing", "auth.apiKeySecretRef: Secret m-key has no non-empty key apiKey")

    fake.objects[("Secret", "ns", "m-key")]["data"]["apiKey"] = KEY_VALUE
    patch, deployment, _ = secured(patch)
    expect(patch, "SecretNotFound", "tls.secretName: Secret m-tls not found in namespace ns")

    tls = {"metadata": {"name": "m-tls"}, "type": "Opaque", "data": {"tls.crt": CERT_B64, "tls.key": CERT_B64}}
    fake.objects[("Secret", "ns", "m-tls")] = tls
    patch, deployment, _ = secured(patch)
    expect(patch, "SecretTypeMismatch", "tls.secretName: Secret m-tls is of type Opaque, not kubernetes.io/tls")

    tls["type"] = "kubernetes.io/tls"
    patch, deployment, warnings = secured(patch)
    expect(patch, "SecretKeyMissing", "tls.secretName: Secret m-tls has no non-empty key ca.crt")  # mutual needs the CA
    assert deployment is None and warnings[0][0] == "SecretKeyMissing"

    tls["data"]["ca.crt"] = CERT_B64
    patch, deployment, warnings = secured(patch)
    assert model_available(patch)["status"] == "True" and warnings == [] and deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "LEPTON_API_KEY", "valueFrom": {"secretKeyRef": {"name": "m-key", "key": "apiKey"}}}]
    children = [child for (kind, _, _), child in fake.objects.items() if kind != "Secret"]
    everything = json.dumps([children, written]) + caplog.text  # objects, status patches, events, logs
    assert "spec of generation 1 accepted" in caplog.text
    assert all(value not in everything for value in (KEY_VALUE, CERT_B64, "super-secret-key"))


def test_the_services_policy_uses_the_operators_monitoring_namespace_and_goes_when_disabled(fake: FakeKube) -> None:
    network.POLICIES.context = NetworkContext(monitoring_namespace="observability")
    raw: dict[str, Any] = {"model": {"name": "m", "source": {"claim": {"name": "models", "path": "m"}}}}

    def converge(generation: int, observed: int | None) -> None:
        body = {"metadata": {"namespace": "ns", "name": "serve", "uid": "u1", "generation": generation},
                "spec": raw, "status": {"observedGeneration": observed} if observed else {}}  # fmt: skip
        controller.converge(body, InferenceServiceSpec.model_validate(raw), datetime.now(UTC))

    converge(1, None)
    policy = fake.objects[("NetworkPolicy", "ns", "serve-serving")]
    metrics_rule = next(rule for rule in policy["spec"]["ingress"] if rule["ports"] == [{"port": 8002, "protocol": "TCP"}])
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]
    raw["networkPolicy"] = {"enabled": False}
    converge(2, 1)
    assert fake.deleted.count("serve-serving") == 1 and ("Deployment", "ns", "serve") in fake.objects  # serving goes on
    converge(2, 2)
    assert fake.deleted.count("serve-serving") == 1


def test_a_rotated_secret_wakes_the_service_and_rolls_its_template_by_version_never_by_value(fake: FakeKube) -> None:
    key = ObjectKey("InferenceService", "ns", "m")
    secured = {"metadata": {"namespace": "ns", "name": "m", "uid": "u1", "generation": 1}, "spec": SECURED, "status": {}}
    fake.objects[("Secret", "ns", "m-key")] = {"metadata": {"name": "m-key", "resourceVersion": "11"}, "type": "Opaque",
                                               "data": {"apiKey": KEY_VALUE}}  # fmt: skip
    fake.objects[("Secret", "ns", "m-tls")] = {"metadata": {"name": "m-tls", "resourceVersion": "12"}, "type": "kubernetes.io/tls",
                                               "data": {"tls.crt": CERT_B64, "tls.key": CERT_B64, "ca.crt": CERT_B64}}  # fmt: skip

    def annotation() -> str:
        controller.reconcile_service(secured, {}, retry=0, logger=logging.getLogger("test"), warn=lambda r, m: None)
        return str(fake.objects[("Deployment", "ns", "m")]["spec"]["template"]["metadata"]["annotations"][SECRET_VERSIONS_ANNOTATION])

    try:
        assert annotation() == "m-key=11,m-tls=12" and SECRET_VERSIONS.moved() == []
        fake.objects[("Secret", "ns", "m-key")] = {"metadata": {"name": "m-key", "resourceVersion": "13"}, "type": "Opaque",
                                                   "data": {"apiKey": CERT_B64}}  # fmt: skip
        assert SECRET_VERSIONS.moved() == [key]  # the poll wakes the service ...
        assert annotation() == "m-key=13,m-tls=12" and SECRET_VERSIONS.moved() == []  # ... whose pass rolls the template
        del fake.objects[("Secret", "ns", "m-key")]
        assert SECRET_VERSIONS.moved() == [key]  # gone: one wake; the pass reports it and its own recheck takes over
        controller.reconcile_service(secured, {}, retry=0, logger=logging.getLogger("test"), warn=lambda r, m: None)
        assert SECRET_VERSIONS.moved() == []
    finally:
        SECRET_VERSIONS.forget(key)


def test_a_service_without_secrets_has_no_versions_in_its_template(fake: FakeKube) -> None:
    plain = {"model": {"name": "m", "source": {"claim": {"name": "models", "path": "m"}}}}
    controller.reconcile_service({"metadata": {"namespace": "ns", "name": "m", "uid": "u1", "generation": 1}, "spec": plain,
                                  "status": {}}, {}, retry=0, logger=logging.getLogger("test"), warn=lambda r, m: None)  # fmt: skip
    assert SECRET_VERSIONS_ANNOTATION not in fake.objects[("Deployment", "ns", "m")]["spec"]["template"]["metadata"]["annotations"]
