"""Labels, owner references and GPU scheduling shared by every rendered child."""

from __future__ import annotations

from lepton_operator.api.common import GPUSpec, ResourceRequirements, Toleration
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
