"""Pure renderers for the local cluster: the kwokctl configuration and the fake Node objects.

Nothing here touches the filesystem (beyond reading the committed stage files) or a cluster, so
all of it is unit-tested in ``e2e/tests/test_localcluster_config.py``.

The kwokctl configuration is one multi-document YAML file passed with ``kwokctl create cluster -c``:

* a ``KwokctlConfiguration`` whose ``options`` point every component at the binaries built by
  ``build.py`` (so kwokctl downloads nothing), bind to every address of the cluster's private
  network namespace (see ``netns.py``; the host never sees these ports), put the ``kubernetes``
  Service IP and the node IP in the API server certificate (in-cluster clients verify TLS), and
  whose ``componentsPatches`` add

  - to kube-apiserver: ``advertise-address=<node IP>`` (the ``kubernetes`` Service's endpoint,
    reached by pods through kube-proxy), ``kubelet-preferred-address-types=InternalIP``, the
    admin certificate as its kubelet client certificate (the real kubelet authenticates and
    authorizes it by webhook), and the ``PodNodeSelector`` and ``PodTolerationRestriction``
    admission plugins that steer pods between kwok and the real node (see below), and
  - to kwok-controller: ``manage-all-nodes=false``,
    ``manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake`` and a fake-pod ``cidr``
    outside the Service range 10.0.0.0/24. kwokctl hard-codes ``--manage-all-nodes=true``; the
    later flag wins. Without this, the real kubelet node would be taken over by kwok,
    and fake pods would get 10.0.0.1, the ``kubernetes`` Service IP. (``--extra-args`` for a
    second component makes kwokctl v0.8.0 index out of range, so patches live in the file.)

* the ``Stage`` documents (``e2e/stages/*.yaml``). Stages in the file REPLACE kwok's defaults, so
  the directory holds kwok's own ``fast`` pod stages (ready / Job pods complete / delete), the
  node initialize + lease heartbeat stages kwokctl would use by default, kwok's chaos stage
  ``pod-container-running-failed`` and Lepton's ``pod-termination-message`` stage. Pods that are
  not owned by a Job stay Running until deleted, failed by label, or completed by annotation.

Fake nodes: 2 CPU nodes and 4 GPU nodes by default (``LEPTON_E2E_CPU_NODES`` /
``LEPTON_E2E_GPU_NODES`` override; a benchmark may ask for hundreds). A GPU node advertises
``nvidia.com/gpu`` in capacity and allocatable, the GPU-operator labels the operator selects on,
and the ``nvidia.com/gpu=present:NoSchedule`` taint GPU pods must tolerate.

Steering between kwok nodes and the real node: every kwok node carries the :data:`KWOK_TAINT`
``kwok.x-k8s.io/node=fake:NoSchedule``, so a pod lands on one only if it tolerates that. Pods of a
namespace made by :func:`kwok_namespace` get the toleration and the node selector ``type=kwok``
from the namespace's annotations (admission plugins ``PodTolerationRestriction`` and
``PodNodeSelector``), so the kwok-only tests' pods stay on kwok nodes without knowing about it;
every other namespace (``kube-system``'s CoreDNS, ``lepton-system``, full-path tests) schedules
on the real node. On kind neither plugin is enabled and no node is tainted: the annotations are
inert there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

#: The committed stage files (see module docstring).
STAGES_DIR = Path(__file__).resolve().parent.parent / "stages"

SERVICE_CIDR = "10.0.0.0/24"  # kube-apiserver's default, used by kwokctl
FAKE_POD_CIDR = "10.128.0.0/16"  # kwok hands fake pods IPs from here: 65k, outside SERVICE_CIDR
#: Inside the cluster's own network namespace: every address there is private to the cluster.
BIND_ADDRESS = "0.0.0.0"
KUBERNETES_SERVICE_IP = "10.0.0.1"

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_SELECTOR = f"{KWOK_NODE_ANNOTATION}=fake"
#: Every kwok node's taint, and what a pod needs to land on one (see the module docstring).
KWOK_TAINT: dict[str, str] = {"key": KWOK_NODE_ANNOTATION, "value": "fake", "effect": "NoSchedule"}
KWOK_TOLERATION: dict[str, str] = {"key": KWOK_NODE_ANNOTATION, "operator": "Equal", "value": "fake",
                                   "effect": "NoSchedule"}
DEFAULT_TOLERATIONS_ANNOTATION = "scheduler.alpha.kubernetes.io/defaultTolerations"
NODE_SELECTOR_ANNOTATION = "scheduler.alpha.kubernetes.io/node-selector"
KWOK_NODE_LABEL = "type=kwok"
STEERING_ADMISSION_PLUGINS = "PodNodeSelector,PodTolerationRestriction"

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_TAINT: dict[str, str] = {"key": GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"}
#: What a GPU pod needs to be admitted to a fake GPU node.
GPU_TOLERATION: dict[str, str] = {"key": GPU_TAINT_KEY, "operator": "Equal", "value": "present",
                                  "effect": "NoSchedule"}

#: Marks the nodes :func:`default_nodes` made, so a smaller pool can be selected for deletion.
DEFAULT_POOL_LABEL = "lepton.ai/default-pool"
DEFAULT_CPU_NODES = 2
DEFAULT_GPU_NODES = 4
GPUS_PER_NODE = 8

#: Labels and annotations of the stages, for tests and the operator's e2e fixtures.
FAIL_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
FAIL_EXIT_CODE = f"{FAIL_LABEL}/exit-code"
FAIL_REASON = f"{FAIL_LABEL}/reason"
FAIL_MESSAGE = f"{FAIL_LABEL}/message"
FAIL_DELAY = f"{FAIL_LABEL}/delay"
TERMINATION_MESSAGE = "lepton.ai/kwok-termination-message"
TERMINATION_EXIT_CODE = "lepton.ai/kwok-exit-code"
TERMINATION_DELAY = "lepton.ai/kwok-delay"


def load_stages(directory: Path = STAGES_DIR) -> list[dict[str, Any]]:
    """Every ``Stage`` document in ``directory``, sorted by file name."""
    stages: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Stage":
                stages.append(doc)
    if not stages:
        raise FileNotFoundError(f"no kwok Stage documents in {directory}")
    return stages


def _args(pairs: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in pairs.items()]


def kwokctl_config(binaries: Mapping[str, Path | str], stages: Sequence[Mapping[str, Any]], *,
                   kube_version: str, node_ip: str, pki_dir: Path | str,
                   apiserver_port: int | None = None,
                   audit_policy: Path | None = None,
                   extra_apiserver_args: Mapping[str, str] | None = None,
                   pod_cidr: str = FAKE_POD_CIDR) -> list[dict[str, Any]]:
    """The documents of the kwokctl ``-c`` file.

    ``binaries`` maps command names (``kube-apiserver``, ``kube-controller-manager``,
    ``kube-scheduler``, ``kubectl``, ``kwok``, ``etcd``) to paths; ``node_ip`` is the real node's
    (and the API server's advertised) address; ``pki_dir`` is where kwokctl keeps the cluster's
    certificates (``<workdir>/clusters/<name>/pki``).
    """
    required = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "etcd")
    absent = [n for n in required if n not in binaries]
    if absent:
        raise ValueError(f"kwokctl_config: no path for {', '.join(absent)}")
    options: dict[str, Any] = {
        "runtime": "binary",
        "kubeVersion": kube_version,
        "bindAddress": BIND_ADDRESS,
        "kubeApiserverBinary": str(binaries["kube-apiserver"]),
        "kubeControllerManagerBinary": str(binaries["kube-controller-manager"]),
        "kubeSchedulerBinary": str(binaries["kube-scheduler"]),
        "kubectlBinary": str(binaries["kubectl"]),
        "kwokControllerBinary": str(binaries["kwok"]),
        "etcdBinary": str(binaries["etcd"]),
        # In-cluster clients reach the API at the `kubernetes` Service IP, the kubelet at the node IP.
        "kubeApiserverCertSANs": [KUBERNETES_SERVICE_IP, node_ip],
    }
    if apiserver_port:
        options["kubeApiserverPort"] = apiserver_port
    if audit_policy is not None:
        options["kubeAuditPolicy"] = str(audit_policy)
    pki = Path(pki_dir)
    apiserver_args = {"advertise-address": node_ip, "kubelet-preferred-address-types": "InternalIP",
                      "kubelet-client-certificate": str(pki / "admin.crt"),
                      "kubelet-client-key": str(pki / "admin.key"),
                      "enable-admission-plugins": STEERING_ADMISSION_PLUGINS,
                      **(extra_apiserver_args or {})}
    kwok_args = {"manage-all-nodes": "false", "manage-nodes-with-annotation-selector": KWOK_NODE_SELECTOR,
                 "cidr": pod_cidr}
    kwokctl: dict[str, Any] = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": options,
        "componentsPatches": [
            {"name": "kube-apiserver", "extraArgs": _args(apiserver_args)},
            {"name": "kwok-controller", "extraArgs": _args(kwok_args)},
        ],
    }
    return [kwokctl, *(dict(s) for s in stages)]


def dump_documents(docs: Sequence[Mapping[str, Any]]) -> str:
    """Multi-document YAML text."""
    return yaml.safe_dump_all([dict(d) for d in docs], sort_keys=False)


# ---------------------------------------------------------------------------------------------
# fake nodes


def _node(name: str, labels: Mapping[str, str], resources: Mapping[str, str],
          taints: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = [dict(t) for t in taints]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/role": "agent",
                       "node-role.kubernetes.io/agent": "", "type": "kwok", **labels},
        },
        "spec": spec,
        # Nodes accept status on create; kwok's node-initialize stage keeps these values.
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def cpu_node(name: str, *, cpu: str = "32", memory: str = "128Gi", pods: str = "110") -> dict[str, Any]:
    """A fake CPU-only node."""
    return _node(name, {"lepton.ai/node-pool": "cpu"}, {"cpu": cpu, "memory": memory, "pods": pods},
                 [KWOK_TAINT])


def gpu_node(name: str, *, gpus: int = GPUS_PER_NODE, product: str = GPU_PRODUCT, cpu: str = "192",
             memory: str = "2Ti", pods: str = "110") -> dict[str, Any]:
    """A fake GPU node shaped like an 8x H100 server, labelled as NVIDIA's GPU operator would."""
    labels = {"lepton.ai/node-pool": "gpu", GPU_PRODUCT_LABEL: product, "nvidia.com/gpu.present": "true",
              "nvidia.com/gpu.count": str(gpus)}
    return _node(name, labels, {"cpu": cpu, "memory": memory, "pods": pods, GPU_RESOURCE: str(gpus)},
                 [GPU_TAINT, KWOK_TAINT])


def cpu_node_name(i: int) -> str:
    return f"kwok-cpu-{i}"


def gpu_node_name(i: int) -> str:
    return f"kwok-gpu-{i}"


def _env_count(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value < 0:
        raise ValueError(f"{var} must be >= 0, got {raw}")
    return value


def node_counts(cpu_nodes: int | None = None, gpu_nodes: int | None = None) -> tuple[int, int]:
    """Explicit counts win, then ``LEPTON_E2E_CPU_NODES`` / ``LEPTON_E2E_GPU_NODES``, then 2 and 4."""
    cpu = cpu_nodes if cpu_nodes is not None else _env_count("LEPTON_E2E_CPU_NODES", DEFAULT_CPU_NODES)
    gpu = gpu_nodes if gpu_nodes is not None else _env_count("LEPTON_E2E_GPU_NODES", DEFAULT_GPU_NODES)
    return cpu, gpu


def default_nodes(cpu_nodes: int | None = None, gpu_nodes: int | None = None,
                  gpus_per_node: int = GPUS_PER_NODE) -> list[dict[str, Any]]:
    """The cluster's initial fake nodes (see :func:`node_counts`)."""
    cpu, gpu = node_counts(cpu_nodes, gpu_nodes)
    nodes = ([cpu_node(cpu_node_name(i)) for i in range(cpu)]
             + [gpu_node(gpu_node_name(i), gpus=gpus_per_node) for i in range(gpu)])
    for node in nodes:
        node["metadata"]["labels"][DEFAULT_POOL_LABEL] = "true"
    return nodes


def kwok_namespace_annotations() -> dict[str, str]:
    """Annotations that send every pod of a namespace to kwok nodes (see the module docstring)."""
    return {DEFAULT_TOLERATIONS_ANNOTATION: json.dumps([KWOK_TOLERATION]),
            NODE_SELECTOR_ANNOTATION: KWOK_NODE_LABEL}


def kwok_namespace(name: str) -> dict[str, Any]:
    """A Namespace whose pods run on kwok nodes only."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "annotations": kwok_namespace_annotations()}}


def node_list(nodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``v1 List`` of nodes, for one ``kubectl apply``/``create`` call."""
    return {"apiVersion": "v1", "kind": "List", "items": [dict(n) for n in nodes]}
