"""Fake nodes at run time: create the default pool, add or remove GPU nodes, wait for Ready.

kwok takes over every Node annotated ``kwok.x-k8s.io/node: fake`` (and only those, see
``config.py``) and marks it Ready within a second; the real scheduler then places pods on it
against the advertised ``nvidia.com/gpu``. Elastic-training tests call :func:`add_gpu_node` and
:func:`delete_node` while a job runs; benchmarks pass large counts to :func:`ensure_nodes`.

Pods bound to a deleted node are removed by kube-controller-manager's pod GC (orphaned pods),
as on a real cluster when a machine disappears.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from localcluster import config
from localcluster.kube import Kubectl, node_ready, wait_until


def kwok_nodes(kubectl: Kubectl) -> list[dict[str, Any]]:
    """All fake nodes (label ``type=kwok``)."""
    items: list[dict[str, Any]] = kubectl.in_namespace(None).get("nodes", None, "-l", "type=kwok")
    return items


def create_nodes(kubectl: Kubectl, nodes: Sequence[Mapping[str, Any]], chunk: int = 200) -> None:
    """Create nodes in a few ``kubectl create`` calls (one per ``chunk``)."""
    for i in range(0, len(nodes), chunk):
        kubectl.in_namespace(None).create(config.node_list(nodes[i:i + chunk]))


def wait_nodes_ready(kubectl: Kubectl, names: Sequence[str] | None = None, timeout: float = 60.0) -> None:
    """Wait until every node (or every node in ``names``) is Ready."""
    k = kubectl.in_namespace(None)
    wanted = set(names) if names is not None else None

    def all_ready() -> bool:
        nodes = k.get("nodes")
        seen = {n["metadata"]["name"]: node_ready(n) for n in nodes}
        if wanted is not None:
            return all(seen.get(n, False) for n in wanted)
        return bool(seen) and all(seen.values())

    what = f"nodes {sorted(wanted)[:5]}{'...' if wanted and len(wanted) > 5 else ''} Ready" if wanted \
        else "all nodes Ready"
    wait_until(all_ready, timeout, what, interval=0.3)


def ensure_nodes(kubectl: Kubectl, cpu_nodes: int | None = None, gpu_nodes: int | None = None,
                 timeout: float = 120.0) -> list[str]:
    """Make the default pool exactly ``kwok-cpu-0..N-1`` and ``kwok-gpu-0..M-1``; wait Ready.

    Nodes added by :func:`add_gpu_node` (without the default-pool label) are left alone. Returns
    the names of the default pool.
    """
    cpu, gpu = config.node_counts(cpu_nodes, gpu_nodes)
    wanted = config.default_nodes(cpu, gpu)
    wanted_names = [n["metadata"]["name"] for n in wanted]
    current = kwok_nodes(kubectl)
    existing = {n["metadata"]["name"] for n in current}
    missing = [n for n in wanted if n["metadata"]["name"] not in existing]
    if missing:
        create_nodes(kubectl, missing)
    pool = {n["metadata"]["name"] for n in current
            if n["metadata"].get("labels", {}).get(config.DEFAULT_POOL_LABEL) == "true"}
    if pool - set(wanted_names):
        # Delete by selector, never by a list of names: kubectl fetches named objects one by one
        # (~0.2 s each here), a selector is one list call (500 nodes in about a second).
        exclude = ",".join(f"metadata.name!={n}" for n in wanted_names)
        args = ["nodes", "-l", f"{config.DEFAULT_POOL_LABEL}=true", "--wait=false"]
        kubectl.in_namespace(None)("delete", *args, *(["--field-selector", exclude] if exclude else []),
                                   timeout=120)
    wait_nodes_ready(kubectl, wanted_names, timeout)
    return wanted_names


def add_gpu_node(kubectl: Kubectl, name: str | None = None, *, gpus: int = config.GPUS_PER_NODE,
                 product: str = config.GPU_PRODUCT, wait: bool = True, timeout: float = 30.0) -> str:
    """Add one fake GPU node (default name ``kwok-gpu-x-<random>``); return its name."""
    node_name = name or f"kwok-gpu-x-{uuid.uuid4().hex[:8]}"
    kubectl.in_namespace(None).create(config.gpu_node(node_name, gpus=gpus, product=product))
    if wait:
        wait_nodes_ready(kubectl, [node_name], timeout)
    return node_name


def delete_node(kubectl: Kubectl, name: str, *, wait: bool = True, timeout: float = 30.0) -> None:
    """Delete a node (its pods are then garbage-collected by the controller-manager)."""
    k = kubectl.in_namespace(None)
    k.delete("node", name)
    if wait:
        wait_until(lambda: k.get_or_none("node", name) is None, timeout, f"node {name} gone")
