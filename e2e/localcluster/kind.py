"""``LEPTON_E2E_CLUSTER=kind``: the same e2e tests on a kind cluster with fake GPU capacity.

NOT RUN on the project's machines: they have no container engine (only the ``docker`` client) and
cannot pull images. Written for developer laptops and CI runners that have Docker or Podman.

kind nodes are real kubelets, so GPUs are faked the way the Kubernetes docs' "Advertise Extended
Resources for a Node" task does: a JSON patch on the node's ``status`` subresource adds
``nvidia.com/gpu`` to capacity and allocatable (the kubelet keeps extended resources it does not
manage), then the GPU operator's labels and the ``nvidia.com/gpu=present:NoSchedule`` taint are
added. The scheduler then treats those workers exactly like the local cluster's kwok GPU nodes.
Unlike the local cluster there are no kwok stages: pods really run their images, and fake nodes
cannot be added at run time (``Cluster.fake_nodes`` is False).

Workers: ``LEPTON_E2E_CPU_NODES`` (default 1) CPU workers followed by ``LEPTON_E2E_GPU_NODES``
(default 2) GPU workers. ``LEPTON_KIND_NODE_IMAGE`` picks the node image (default: kind's own).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from localcluster import build, config
from localcluster.handle import MODE_KIND, Cluster, ClusterError, wait_ready
from localcluster.kube import Kubectl

CLUSTER_NAME = "lepton"
KIND_DEFAULT_CPU_WORKERS = 1
KIND_DEFAULT_GPU_WORKERS = 2


def kind_config(workers: int) -> str:
    """A kind ``Cluster`` config with one control plane and ``workers`` workers."""
    lines = ["kind: Cluster", "apiVersion: kind.x-k8s.io/v1alpha4", "nodes:", "- role: control-plane"]
    lines += ["- role: worker"] * workers
    return "\n".join(lines) + "\n"


def gpu_status_patch(gpus: int) -> str:
    """JSON patch adding ``nvidia.com/gpu`` to a node's capacity and allocatable."""
    key = config.GPU_RESOURCE.replace("/", "~1")
    return json.dumps([{"op": "add", "path": f"/status/{field}/{key}", "value": str(gpus)}
                       for field in ("capacity", "allocatable")])


def _kind(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(build.ensure_kind()), *args], capture_output=True, text=True, timeout=timeout)


def exists() -> bool:
    proc = _kind("get", "clusters", timeout=60)
    return proc.returncode == 0 and CLUSTER_NAME in proc.stdout.split()


def make_gpu_node(kubectl: Kubectl, node: str, gpus: int = config.GPUS_PER_NODE) -> None:
    """Turn a kind worker into a fake GPU node (idempotent)."""
    k = kubectl.in_namespace(None)
    k("patch", "node", node, "--subresource=status", "--type=json", "-p", gpu_status_patch(gpus))
    labels = {"lepton.ai/node-pool": "gpu", config.GPU_PRODUCT_LABEL: config.GPU_PRODUCT,
              "nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": str(gpus)}
    k("label", "node", node, "--overwrite", *(f"{key}={v}" for key, v in labels.items()))
    t = config.GPU_TAINT
    k("taint", "node", node, "--overwrite", f"{t['key']}={t['value']}:{t['effect']}")


def up(kubeconfig: Path, kubectl_binary: Path, cpu_nodes: int | None, gpu_nodes: int | None,
       timeout: float) -> Cluster:
    cpu = cpu_nodes if cpu_nodes is not None else int(os.environ.get("LEPTON_E2E_CPU_NODES",
                                                                     KIND_DEFAULT_CPU_WORKERS))
    gpu = gpu_nodes if gpu_nodes is not None else int(os.environ.get("LEPTON_E2E_GPU_NODES",
                                                                     KIND_DEFAULT_GPU_WORKERS))
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    created = False
    if not exists():
        cfg = kubeconfig.parent / "kind-config.yaml"
        cfg.write_text(kind_config(cpu + gpu))
        args = ["create", "cluster", "--name", CLUSTER_NAME, "--config", str(cfg),
                "--kubeconfig", str(kubeconfig), "--wait", f"{int(timeout)}s"]
        if os.environ.get("LEPTON_KIND_NODE_IMAGE"):
            args += ["--image", os.environ["LEPTON_KIND_NODE_IMAGE"]]
        build.log("creating kind cluster 'lepton'")
        proc = _kind(*args)
        if proc.returncode != 0:
            raise ClusterError(f"kind create cluster failed:\n{proc.stdout}{proc.stderr}")
        created = True
    else:
        proc = _kind("get", "kubeconfig", "--name", CLUSTER_NAME, timeout=60)
        if proc.returncode != 0:
            raise ClusterError(f"kind get kubeconfig failed:\n{proc.stderr}")
        kubeconfig.write_text(proc.stdout)
    k = Kubectl(kubectl_binary, kubeconfig)
    wait_ready(k, timeout, on_error="(kind cluster 'lepton'; see `kind export logs --name lepton`)")
    workers = sorted(n["metadata"]["name"] for n in k.get("nodes")
                     if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {}))
    if len(workers) < cpu + gpu:
        raise ClusterError(f"kind cluster has {len(workers)} workers, need {cpu + gpu}; "
                           "delete it (`python -m localcluster down`) to recreate")
    for node in workers[cpu:cpu + gpu]:
        make_gpu_node(k, node)
    return Cluster(MODE_KIND, CLUSTER_NAME, kubeconfig, kubectl_binary, created, False)


def down(kubeconfig: Path) -> bool:
    if not exists():
        return False
    proc = _kind("delete", "cluster", "--name", CLUSTER_NAME, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"kind delete cluster failed:\n{proc.stderr}")
    kubeconfig.unlink(missing_ok=True)
    return True
