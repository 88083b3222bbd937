"""The dataset's claim and prepare Job, rendered from the spec."""

from __future__ import annotations

import json
from typing import Any

import restricted_policy

from lepton_operator.api.dataset import LeptonDatasetSpec
from lepton_operator.api.quantity import parse_quantity
from lepton_operator.render import dataset as render


def spec(**overrides: Any) -> LeptonDatasetSpec:
    raw: dict[str, Any] = {"source": {"uri": "https://data.example.com/images/"}, "modality": "image"}
    raw.update(overrides)
    return LeptonDatasetSpec.model_validate(raw)


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_claim_is_named_after_the_dataset_with_storage_from_spec() -> None:
    claim = render.claim("imgs", "ns", "uid-1", spec(storage={"size": "5Gi", "storageClassName": "fast",
                                                              "accessModes": ["ReadWriteMany"]}))  # fmt: skip
    assert claim["metadata"]["name"] == "imgs" and claim["metadata"]["namespace"] == "ns"
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}},
                             "storageClassName": "fast"}  # fmt: skip
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert claim["metadata"]["labels"]["lepton.ai/leptondataset"] == "imgs"
    assert "storageClassName" not in render.claim("imgs", "ns", "u", spec())["spec"]


def test_job_runs_the_preparer_with_the_spec_as_environment() -> None:
    wanted = spec(shards={"count": 4}, splits={"train": 0.8, "validation": 0.2, "seed": 7},
                  verify={"sha256": "a" * 64}, prepare={"backoffLimit": 1, "timeoutSeconds": 600})  # fmt: skip
    job = render.prepare_job("imgs", "ns", "uid-1", wanted, image="reg/workloads:1")
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "reg/workloads:1"
    assert container["command"] == ["python", "-m", "lepton_workloads.prepare"]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "imgs"}}]
    assert pod["restartPolicy"] == "Never"
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (1, 600)
    [rule] = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [render.EXIT_PERMANENT]
    env = env_of(job)
    assert env["LEPTON_SOURCE_URI"] == "https://data.example.com/images/" and env["LEPTON_MODALITY"] == "image"
    assert (env["LEPTON_SHARD_COUNT"], env["LEPTON_SPLIT_TRAIN"], env["LEPTON_SPLIT_VALIDATION"]) == ("4", "0.8", "0.2")
    assert env["LEPTON_SPLIT_SEED"] == "7" and env["LEPTON_VERIFY_SHA256"] == "a" * 64
    assert env["LEPTON_SPEC_HASH"] == render.data_hash(wanted) == job["metadata"]["labels"][render.SPEC_HASH_LABEL]
    assert "LEPTON_SHARD_TARGET_BYTES" not in env and "LEPTON_SOURCE_TOKEN" not in env
    assert env["LEPTON_CLAIM_BYTES"] == str(int(parse_quantity(wanted.storage.size)))  # the preparer's budget
    assert job["metadata"]["name"] == f"imgs-prepare-{render.data_hash(wanted)}"
    assert job["spec"]["template"]["metadata"]["labels"]["lepton.ai/role"] == "prepare"


def test_spec_image_wins_and_scheduling_is_passed_on() -> None:
    job = render.prepare_job("d", "ns", "u", spec(prepare={
        "image": "mine:2", "nodeSelector": {"pool": "cpu"}, "resources": {"limits": {"cpu": "2"}},
        "tolerations": [{"key": "k", "operator": "Exists"}], "podAnnotations": {"a": "b"}}))  # fmt: skip
    pod = job["spec"]["template"]
    assert pod["spec"]["containers"][0]["image"] == "mine:2"
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {"cpu": "2"}}
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"} and pod["spec"]["tolerations"][0]["key"] == "k"
    assert pod["metadata"]["annotations"] == {"a": "b"}


def test_credentials_are_passed_by_reference_only() -> None:
    explicit = spec(source={"uri": "s3://bucket/x/", "secretRef": {"name": "creds", "keys": {
        "accessKeyId": "AK", "secretAccessKey": "SK"}}, "endpoint": "http://minio:9000"})  # fmt: skip
    env = env_of(render.prepare_job("d", "ns", "u", explicit))
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "creds", "key": "AK"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "creds", "key": "SK"}}
    assert env["LEPTON_S3_ENDPOINT"] == "http://minio:9000"
    implicit = spec(source={"uri": "https://h/x.tar", "secretRef": {"name": "tok"}})
    env = env_of(render.prepare_job("d", "ns", "u", implicit))
    assert env["LEPTON_SOURCE_TOKEN"] == {"secretKeyRef": {"name": "tok", "key": "token", "optional": True}}
    text = json.dumps(render.prepare_job("d", "ns", "u", explicit))
    assert '"value"' not in text.split("AWS_ACCESS_KEY_ID")[1].split("}")[0]


def test_pvc_source_is_mounted_read_only() -> None:
    job = render.prepare_job("d", "ns", "u", spec(source={"uri": "pvc://raw-data/sets/images"}))
    pod = job["spec"]["template"]["spec"]
    assert {"name": "source", "mountPath": render.SOURCE_MOUNT, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert {"name": "source", "persistentVolumeClaim": {"claimName": "raw-data", "readOnly": True}} in pod["volumes"]
    assert env_of(job)["LEPTON_SOURCE_ROOT"] == render.SOURCE_MOUNT


def test_only_data_changes_change_the_hash() -> None:
    base = spec()
    assert render.data_hash(base) == render.data_hash(spec(storage={"size": "50Gi"}))
    assert render.data_hash(base) == render.data_hash(spec(prepare={"backoffLimit": 9, "podAnnotations": {"x": "y"}}))
    for change in ({"source": {"uri": "https://data.example.com/other/"}}, {"modality": "text"},
                   {"shards": {"count": 3}}, {"splits": {"seed": 1}}, {"verify": {"sha256": "b" * 64}}):  # fmt: skip
        assert render.data_hash(spec(**change)) != render.data_hash(base), change


def test_job_name_fits_a_label_value() -> None:
    name = render.job_name("a" * 200, spec())
    assert len(name) <= 63 and name.endswith(render.data_hash(spec()))


def test_preparer_passes_pod_security_restricted_and_identity_never_re_prepares() -> None:
    job = render.prepare_job("cats", "ml", "uid-1", spec())
    assert restricted_policy.violations(job["spec"]["template"]["spec"]) == []
    chosen = spec(prepare={"securityContext": {"runAsUser": 2000, "fsGroup": 2000}})
    assert render.prepare_job("cats", "ml", "uid-1", chosen)["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 2000
    assert render.data_hash(chosen) == render.data_hash(spec())


def test_preparer_declares_the_progress_port_and_gets_it_in_its_environment() -> None:
    job = render.prepare_job("d", "ns", "u", spec())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "progress", "containerPort": 9400}]
    assert env_of(job)["LEPTON_PROGRESS_PORT"] == "9400"


def test_a_source_ca_bundle_is_mounted_into_the_preparer_only_when_set() -> None:
    plain = render.prepare_job("imgs", "ns", "u", spec())["spec"]["template"]["spec"]
    assert "LEPTON_SOURCE_CA_FILE" not in env_of({"spec": {"template": {"spec": plain}}})
    assert [volume["name"] for volume in plain["volumes"]] == ["data"]
    source = {"uri": "https://data.corp/images/", "caBundle": {"configMapRef": {"name": "corp-ca"}}}
    job = render.prepare_job("imgs", "ns", "u", spec(source=source))
    pod = job["spec"]["template"]["spec"]
    assert env_of(job)["LEPTON_SOURCE_CA_FILE"] == "/lepton/source-ca/corp-ca/ca.crt"
    [container] = pod["containers"]
    assert {"name": "source-ca", "mountPath": "/lepton/source-ca/corp-ca", "readOnly": True} in container["volumeMounts"]
    assert {"name": "source-ca", "configMap": {"name": "corp-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in pod["volumes"]
    assert restricted_policy.violations(pod) == []  # a ConfigMap volume is allowed under restricted
