"""Bring the test cluster up, reuse it, tear it down.

Three modes, chosen by environment:

* default: the **local cluster** (``local.py``), a real kube-apiserver, etcd,
  kube-controller-manager and kube-scheduler plus kwok-controller, started as plain processes by
  ``kwokctl --runtime binary`` from the binaries ``build.py`` caches, fake CPU/GPU nodes
  (``nodes.py``), and **one real node** (``realnode.py``: containerd, kubelet, kube-proxy,
  CoreDNS). All of it runs inside a network namespace of its own (``netns.py``); a port forwarder
  keeps the kubeconfig's ``https://127.0.0.1:<port>`` working on the host, and
  :meth:`Cluster.network_argv` runs a command inside (to reach pod and Service IPs). Needs Linux
  and root; when the machine cannot host the real node, ``up()`` says why and points at kind.
  Named ``lepton``; state in ``$LEPTON_STATE_DIR`` or the repo's gitignored ``.lepton/``.
* ``LEPTON_E2E_CLUSTER=kind``: a kind cluster named ``lepton`` whose workers get fake GPU capacity
  (``kind.py``; needs a container engine, which the project's CI machines lack).
* ``LEPTON_E2E_KUBECONFIG=PATH``: an existing cluster, used as is; never created or deleted.

:func:`up` is idempotent: a healthy running cluster is reused (and its default node pool topped
up), anything else is deleted and created afresh. It returns once ``/readyz`` passes, every node
is Ready and the ``default`` ServiceAccount exists in ``default`` (pods are refused until then).
A cluster that cannot start raises :class:`ClusterError` with the tail of the component logs; it
is an error, never a skip. A file lock serialises concurrent ``up``/``down`` calls. Sessions
sharing one cluster (several engineers' pytest runs in one checkout) register their pid
(:func:`register_user`); a cluster a test session created is marked ephemeral and deleted by
whichever session ends last, never under another session still using it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from localcluster import build, local, netns, nodeconfig, realnode, versions
from localcluster.handle import MODE_EXISTING, MODE_KIND, MODE_LOCAL, Cluster, ClusterError, api_ready, wait_ready
from localcluster.kube import Kubectl, node_ready
from localcluster.paths import state_dir
from localcluster.sharing import mark_ephemeral

CLUSTER_NAME = local.CLUSTER_NAME
__all__ = ["CLUSTER_NAME", "MODE_EXISTING", "MODE_KIND", "MODE_LOCAL", "Cluster", "ClusterError", "api_ready",
           "cluster_mode", "down", "kubeconfig_path", "kubectl_path", "status", "up", "wait_ready"]


# ---------------------------------------------------------------------------------------------
# paths and modes


def cluster_mode() -> str:
    """``existing`` if ``LEPTON_E2E_KUBECONFIG`` is set, else ``LEPTON_E2E_CLUSTER`` (default local)."""
    if os.environ.get("LEPTON_E2E_KUBECONFIG"):
        return MODE_EXISTING
    raw = os.environ.get("LEPTON_E2E_CLUSTER", "").strip().lower()
    if raw in ("", "local", "kwok"):
        return MODE_LOCAL
    if raw == "kind":
        return MODE_KIND
    raise ClusterError(f"LEPTON_E2E_CLUSTER={raw!r}: expected 'local' (default) or 'kind'")


def kubeconfig_path(mode: str | None = None) -> Path:
    """The kubeconfig of the cluster of ``mode`` (default: the current mode)."""
    mode = mode or cluster_mode()
    if mode == MODE_EXISTING:
        return Path(os.environ["LEPTON_E2E_KUBECONFIG"]).expanduser().resolve()
    return state_dir() / "kind-kubeconfig" if mode == MODE_KIND else local.kubeconfig()


def kubectl_path(build_missing: bool = True) -> Path:
    """The kubectl built at the cluster's version (built first when missing and allowed)."""
    path = versions.path_of("kubectl")
    if not path.is_file() and build_missing:
        build.ensure_built(("kubernetes",))
    return path


@contextmanager
def _lock() -> Iterator[None]:
    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "cluster.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _up_existing(timeout: float) -> Cluster:
    kubeconfig = kubeconfig_path(MODE_EXISTING)
    if not kubeconfig.is_file():
        raise ClusterError(f"LEPTON_E2E_KUBECONFIG={kubeconfig} does not exist")
    k = Kubectl(kubectl_path(), kubeconfig)
    wait_ready(k, timeout, on_error=f"(existing cluster from {kubeconfig})")
    return Cluster(MODE_EXISTING, "existing", kubeconfig, kubectl_path(), False, False)


# ---------------------------------------------------------------------------------------------
# public API


def up(cpu_nodes: int | None = None, gpu_nodes: int | None = None, timeout: float = 120.0,
       ephemeral: bool = False) -> Cluster:
    """Start (or reuse) the cluster of the current mode and wait until it is usable.

    ``ephemeral=True`` (test sessions): a cluster created by this call is marked to be deleted
    by the last session using it. Any other caller (CLI, ``make demo``) clears the mark: a cluster
    someone asked for by hand is never deleted by tests.
    """
    start = time.monotonic()
    mode = cluster_mode()
    with _lock():
        if mode == MODE_EXISTING:
            cluster = _up_existing(timeout)
        elif mode == MODE_KIND:
            from localcluster import kind

            cluster = kind.up(kubeconfig_path(MODE_KIND), kubectl_path(), cpu_nodes, gpu_nodes, timeout)
        else:
            cluster = local.up(cpu_nodes, gpu_nodes, timeout)
        if not ephemeral:
            mark_ephemeral(False)
        elif cluster.created:
            mark_ephemeral(True)
    verb = "created" if cluster.created else "reused"
    build.log(f"cluster {cluster.name} ({mode}) {verb}, ready in {time.monotonic() - start:.1f} s; "
              f"KUBECONFIG={cluster.kubeconfig}")
    return cluster


def down() -> bool:
    """Delete the cluster of the current mode; return whether there was one. No-op for existing."""
    mode = cluster_mode()
    with _lock():
        if mode == MODE_EXISTING:
            return False
        if mode == MODE_KIND:
            from localcluster import kind

            return kind.down(kubeconfig_path(MODE_KIND))
        existed = local.exists()
        local.delete()
        mark_ephemeral(False)
        return existed


def status() -> dict[str, Any]:
    """Mode, kubeconfig, whether the API answers, node counts, and which binaries are cached."""
    mode = cluster_mode()
    kubeconfig = kubeconfig_path(mode)
    binaries = (*versions.BINARIES, *(versions.NODE_BINARIES if mode == MODE_LOCAL else ()))
    info: dict[str, Any] = {"mode": mode, "kubeconfig": str(kubeconfig), "running": False,
                            "binaries": {b.name: versions.binary_path(b).is_file() for b in binaries}}
    if mode == MODE_LOCAL:
        inst = netns.instance()
        info["real_node"] = {"name": nodeconfig.NODE_NAME, "processes": realnode.pids(inst),
                             "dead": realnode.dead_processes(inst), "netns": str(inst.net_file)}
    kubectl_bin = versions.path_of("kubectl")
    if kubeconfig.is_file() and kubectl_bin.is_file():
        k = Kubectl(kubectl_bin, kubeconfig)
        info["running"] = api_ready(k)
        if info["running"]:
            all_nodes = k.get("nodes")
            info["nodes"] = len(all_nodes)
            info["nodes_ready"] = sum(1 for n in all_nodes if node_ready(n))
    return info
