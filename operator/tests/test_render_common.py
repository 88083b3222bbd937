"""Labels, owner references and GPU scheduling shared by every rendered child."""

from __future__ import annotations

import restricted_policy

from lepton_operator.api.common import CABundle, GPUSpec, PodSecurity, ResourceRequirements, SecretReference, Toleration
from lepton_operator.render import common


def test_labels_name_owner_and_role() -> None:
    labels = common.child_labels("TrainingJob", "bert", "worker")
    assert labels["lepton.ai/trainingjob"] == "bert"
    assert labels["lepton.ai/role"] == "worker"
    assert common.label_selector(common.selector_labels("TrainingJob", "bert", "worker")) == (
        "lepton.ai/role=worker,lepton.ai/trainingjob=bert"
    )


def test_owner_reference_is_a_blocking_controller_reference() -> None:
    ref = common.owner_reference("InferenceService", "resnet", "uid-1")
    assert ref == {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "InferenceService",
        "name": "resnet",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_gpu_scheduling_adds_limit_selector_and_toleration_once() -> None:
    gpu = GPUSpec(count=4, product="NVIDIA-H100-80GB-HBM3")
    resources = ResourceRequirements(requests={"cpu": "8"}, limits={"memory": "64Gi"})
    assert common.container_resources(resources, gpu) == {
        "requests": {"cpu": "8"},
        "limits": {"memory": "64Gi", "nvidia.com/gpu": 4},
    }
    assert common.node_selector({"pool": "a"}, gpu) == {"pool": "a", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    user = [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"), Toleration(key="spot")]
    rendered = common.tolerations(user, gpu)
    assert rendered.count(common.GPU_TOLERATION) == 1 and len(rendered) == 2


def test_cpu_pods_get_no_gpu_settings() -> None:
    assert common.container_resources(None, None) == {}
    assert common.node_selector(None, None) == {}
    assert common.tolerations(None, None) == []
    assert common.node_selector(None, GPUSpec(count=1)) == {}  # any GPU product will do


def test_placement_renders_only_what_is_set() -> None:
    gpu = GPUSpec(count=1, product="NVIDIA-A100")
    assert common.placement(None, None, None) == {}
    assert common.placement({"pool": "a"}, None, None) == {"nodeSelector": {"pool": "a"}}
    assert common.placement(None, None, gpu) == {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100"},
        "tolerations": [common.GPU_TOLERATION],
    }


def test_harden_makes_every_container_restricted_and_keeps_the_rest() -> None:
    pod = {"initContainers": [{"name": "init"}], "containers": [{"name": "main", "image": "x"}], "restartPolicy": "Never"}
    hardened = common.harden(pod, None)
    assert restricted_policy.violations(pod) != []  # the rendered input alone would be refused
    assert restricted_policy.violations(hardened) == []
    assert hardened["restartPolicy"] == "Never" and hardened["containers"][0]["image"] == "x"
    assert hardened["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": True}
    assert "securityContext" not in pod  # pure: the input is untouched


def test_harden_sets_the_chosen_identity_and_cheap_volume_ownership() -> None:
    hardened = common.harden({"containers": [{"name": "main"}]}, PodSecurity(runAsUser=1000, runAsGroup=1000, fsGroup=2000))
    assert hardened["securityContext"] == {
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 2000,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    assert restricted_policy.violations(hardened) == []


def test_run_as_root_is_an_explicit_opt_out_that_keeps_seccomp_and_no_escalation() -> None:
    hardened = common.harden({"containers": [{"name": "main"}]}, PodSecurity(runAsUser=0))
    assert hardened["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}, "runAsUser": 0}
    assert hardened["containers"][0]["securityContext"] == {"allowPrivilegeEscalation": False}
    assert "the pod runs as uid 0" in restricted_policy.violations(hardened)


def test_source_env_has_settings_as_values_and_credentials_by_reference_only() -> None:
    explicit = SecretReference(name="keys", keys={"accessKeyId": "AK", "secretAccessKey": "SK", "custom": "C"})
    assert common.source_env("s3://b/p/", explicit, "http://minio:9000", "us-east-1") == [
        {"name": "LEPTON_S3_ENDPOINT", "value": "http://minio:9000"},
        {"name": "AWS_REGION", "value": "us-east-1"},
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "AK"}}},
        {"name": "LEPTON_SOURCE_CUSTOM", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "C"}}},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "SK"}}},
    ]
    # Without a key mapping, the scheme's credentials by their own names, each optional.
    implicit = common.source_env("s3://b/p/", SecretReference(name="keys"))
    assert [(e["name"], e["valueFrom"]["secretKeyRef"]) for e in implicit] == [
        ("AWS_ACCESS_KEY_ID", {"name": "keys", "key": "accessKeyId", "optional": True}),
        ("AWS_SECRET_ACCESS_KEY", {"name": "keys", "key": "secretAccessKey", "optional": True}),
        ("AWS_SESSION_TOKEN", {"name": "keys", "key": "sessionToken", "optional": True}),
    ]
    assert common.source_env("https://h/x/", SecretReference(name="t"))[0]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert common.source_env("https://h/x/", None) == []


def test_source_trust_mounts_one_configmap_key_read_only_and_names_the_file() -> None:
    assert common.source_trust(None) == common.SourceTrust()
    trust = common.source_trust(CABundle.model_validate({"configMapRef": {"name": "corp-ca", "key": "ca-bundle.crt"}}))
    assert trust.env == [{"name": "LEPTON_SOURCE_CA_FILE", "value": "/lepton/source-ca/corp-ca/ca.crt"}]
    # One item: no other key of the ConfigMap reaches the pod, and the file name never depends on the key.
    assert trust.volumes == [
        {"name": "source-ca", "configMap": {"name": "corp-ca", "items": [{"key": "ca-bundle.crt", "path": "ca.crt"}]}}
    ]
    # A directory mount, not a subPath: the kubelet refreshes it when the bundle is rewritten.
    assert trust.mounts == [{"name": "source-ca", "mountPath": "/lepton/source-ca/corp-ca", "readOnly": True}]
