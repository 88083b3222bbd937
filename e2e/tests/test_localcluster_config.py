"""Unit tests of the local cluster's pure parts: go.mod parsing, config and node rendering."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from localcluster import build, config, kind, versions

K8S_GOMOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/foo/bar v1.2.3 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go // comment
\tgithub.com/pinned/thing v1.0.0 => github.com/fork/thing v1.0.1
)

replace k8s.io/kubectl => ./staging/src/k8s.io/kubectl
"""


def test_local_replaces_reads_blocks_and_single_lines() -> None:
    assert build.local_replaces(K8S_GOMOD) == [
        ("k8s.io/api", "./staging/src/k8s.io/api"),
        ("k8s.io/client-go", "./staging/src/k8s.io/client-go"),
        ("k8s.io/kubectl", "./staging/src/k8s.io/kubectl"),
    ]


def test_go_and_godebug_lines_are_copied() -> None:
    assert build.go_and_godebug_lines(K8S_GOMOD) == ["go 1.26.0", "godebug default=go1.26"]
    block = "module x\n\ngo 1.25\n\ngodebug (\n\tasynctimerchan=1\n\twinsymlink=0\n)\n"
    assert build.go_and_godebug_lines(block) == ["go 1.25", "godebug asynctimerchan=1", "godebug winsymlink=0"]


def test_wrapper_gomod_replaces_every_staging_module_with_published_version() -> None:
    text = build.wrapper_gomod("lepton.local/w", ["go 1.26.0"], {"k8s.io/kubernetes": "v1.36.3"},
                               {"k8s.io/api": "v0.36.3", "k8s.io/client-go": "v0.36.3"})
    assert "require k8s.io/kubernetes v1.36.3" in text
    assert "replace k8s.io/api => k8s.io/api v0.36.3" in text
    assert "replace k8s.io/client-go => k8s.io/client-go v0.36.3" in text
    assert text.startswith("module lepton.local/w\n\ngo 1.26.0\n")


def test_kubernetes_ldflags_stamp_version() -> None:
    flags = build.kubernetes_ldflags("v1.36.3", "abc123")
    assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in flags
    assert "-X k8s.io/component-base/version.gitMajor=1" in flags
    assert "-X k8s.io/component-base/version.gitMinor=36" in flags
    assert "-X k8s.io/client-go/pkg/version.gitCommit=abc123" in flags
    assert flags.startswith("-s -w ")


def test_versions_and_cache_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert versions.KUBERNETES_STAGING_VERSION == "v0.36.3"
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path))
    assert versions.path_of("kubectl") == tmp_path / "bin" / "kubectl-v1.36.3" / "kubectl"
    assert versions.path_of("etcd") == tmp_path / "bin" / "etcd-v3.6.14" / "etcd"
    monkeypatch.delenv("LEPTON_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert versions.cache_root() == tmp_path / "xdg" / "lepton"


STAGE_NAMES = {"pod-ready", "pod-complete", "pod-delete", "pod-container-running-failed",
               "node-initialize", "node-heartbeat-with-lease", "lepton-pod-termination-message"}


def test_committed_stages_cover_the_lifecycles_we_rely_on() -> None:
    stages = {s["metadata"]["name"]: s for s in config.load_stages()}
    assert set(stages) == STAGE_NAMES
    # Only Job pods complete on their own; other pods stay Running.
    exprs = stages["pod-complete"]["spec"]["selector"]["matchExpressions"]
    assert {"key": ".metadata.ownerReferences.[].kind", "operator": "In", "values": ["Job"]} in exprs
    # Our stages must outweigh pod-complete (weight 0) for Job pods.
    assert stages["pod-container-running-failed"]["spec"]["weight"] > 0
    assert stages["lepton-pod-termination-message"]["spec"]["weight"] > 0


def _binaries() -> dict[str, Path | str]:
    return {n: f"/cache/{n}" for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                      "kubectl", "kwok", "etcd")}


def test_kwokctl_config_points_at_local_binaries_and_patches_components() -> None:
    docs = config.kwokctl_config(_binaries(), config.load_stages(), kube_version="v1.36.3",
                                 node_ip="10.77.0.1", pki_dir="/w/pki")
    kwokctl = docs[0]
    assert kwokctl["apiVersion"] == "config.kwok.x-k8s.io/v1alpha1"
    assert kwokctl["kind"] == "KwokctlConfiguration"
    opts = kwokctl["options"]
    assert opts["runtime"] == "binary" and opts["bindAddress"] == "0.0.0.0"  # inside the cluster's netns
    assert opts["kubeApiserverBinary"] == "/cache/kube-apiserver"
    assert opts["kwokControllerBinary"] == "/cache/kwok"
    assert opts["etcdBinary"] == "/cache/etcd"
    patches = {p["name"]: {a["key"]: a["value"] for a in p["extraArgs"]} for p in kwokctl["componentsPatches"]}
    assert patches["kube-apiserver"]["advertise-address"] == "10.77.0.1"
    kwok = patches["kwok-controller"]
    assert kwok["manage-all-nodes"] == "false"
    assert kwok["manage-nodes-with-annotation-selector"] == "kwok.x-k8s.io/node=fake"
    assert not ipaddress.ip_network(kwok["cidr"]).overlaps(ipaddress.ip_network(config.SERVICE_CIDR))
    assert {d["metadata"]["name"] for d in docs[1:]} == STAGE_NAMES
    # The rendered file round-trips as multi-document YAML.
    assert list(yaml.safe_load_all(config.dump_documents(docs))) == docs


def test_kwokctl_config_requires_every_binary() -> None:
    binaries = _binaries()
    del binaries["etcd"]
    with pytest.raises(ValueError, match="etcd"):
        config.kwokctl_config(binaries, [], kube_version="v1.36.3", node_ip="10.77.0.1", pki_dir="/w/pki")


def test_gpu_node_shape() -> None:
    node = config.gpu_node("g0")
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    labels = node["metadata"]["labels"]
    assert labels["type"] == "kwok"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.present"] == "true" and labels["nvidia.com/gpu.count"] == "8"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
                                      config.KWOK_TAINT]
    for field in ("capacity", "allocatable"):
        res = node["status"][field]
        assert res["nvidia.com/gpu"] == "8" and {"cpu", "memory", "pods"} <= set(res)
    cpu = config.cpu_node("c0")
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"] and cpu["spec"]["taints"] == [config.KWOK_TAINT]


def test_node_counts_from_args_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEPTON_E2E_CPU_NODES", raising=False)
    monkeypatch.delenv("LEPTON_E2E_GPU_NODES", raising=False)
    assert config.node_counts() == (2, 4)
    monkeypatch.setenv("LEPTON_E2E_GPU_NODES", "500")
    assert config.node_counts() == (2, 500)
    assert config.node_counts(0, 1) == (0, 1)
    nodes = config.default_nodes(1, 3)
    assert [n["metadata"]["name"] for n in nodes] == ["kwok-cpu-0", "kwok-gpu-0", "kwok-gpu-1", "kwok-gpu-2"]
    assert all(n["metadata"]["labels"][config.DEFAULT_POOL_LABEL] == "true" for n in nodes)
    assert config.DEFAULT_POOL_LABEL not in config.gpu_node("extra")["metadata"]["labels"]
    monkeypatch.setenv("LEPTON_E2E_CPU_NODES", "-1")
    with pytest.raises(ValueError):
        config.node_counts()


def test_kind_gpu_patch_escapes_resource_name() -> None:
    patch = json.loads(kind.gpu_status_patch(8))
    assert patch == [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "8"},
                     {"op": "add", "path": "/status/allocatable/nvidia.com~1gpu", "value": "8"}]
    assert kind.kind_config(2).count("role: worker") == 2
