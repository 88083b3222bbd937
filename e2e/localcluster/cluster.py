"""Bring the test cluster up, reuse it, tear it down.

Three modes, chosen by environment:

* default: the **local cluster**, a real kube-apiserver, etcd, kube-controller-manager and
  kube-scheduler plus kwok-controller, started as plain processes by ``kwokctl --runtime binary``
  from the binaries ``build.py`` caches, fake CPU/GPU nodes (``nodes.py``), and **one real node**
  (``realnode.py``: containerd, kubelet, kube-proxy, CoreDNS). All of it runs inside a network
  namespace of its own (``netns.py``); a port forwarder keeps the kubeconfig's
  ``https://127.0.0.1:<port>`` working on the host, and :meth:`Cluster.network_argv` runs a
  command inside (to reach pod and Service IPs). Needs Linux and root; when the machine cannot
  host the real node, ``up()`` says why and points at kind. Named ``lepton``; state in
  ``$LEPTON_STATE_DIR`` or the repo's gitignored ``.lepton/`` (``KWOK_WORKDIR=.lepton/kwok``,
  kubeconfig ``.lepton/kubeconfig``, the node under ``.lepton/node``).
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
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import build, config, netns, nodeconfig, nodes, realnode, versions
from localcluster.kube import Kubectl, KubectlError, node_ready, wait_until
from localcluster.lepton import free_port
from localcluster.paths import repo_root, state_dir
from localcluster.sharing import mark_ephemeral, pid_alive

CLUSTER_NAME = "lepton"
MODE_LOCAL, MODE_KIND, MODE_EXISTING = "local", "kind", "existing"


class ClusterError(RuntimeError):
    """The cluster could not be started or reached."""


@dataclass(frozen=True)
class Cluster:
    """A reachable cluster: how to talk to it, and whether this call created it."""

    mode: str
    name: str
    kubeconfig: Path
    kubectl_binary: Path
    created: bool
    #: Whether fake nodes can be added at run time (local kwok cluster only).
    fake_nodes: bool
    #: The local cluster's real node (None on kind / an existing cluster, whose nodes are all real).
    real_node: str | None = None
    #: argv prefix that enters the cluster's network namespace (empty: the host's network).
    network: tuple[str, ...] = ()

    def kubectl(self, namespace: str | None = None) -> Kubectl:
        return Kubectl(self.kubectl_binary, self.kubeconfig, namespace)

    def network_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the cluster's network (pod IPs, Service IPs, the node's ports)."""
        return [*self.network, *argv]

    def run_in_network(self, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the cluster's network; stdout and stderr captured as text."""
        return subprocess.run(self.network_argv(argv), capture_output=True, text=True, timeout=timeout)

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``KUBECONFIG`` for processes that should act on this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


# ---------------------------------------------------------------------------------------------
# paths and modes


def kwok_workdir() -> Path:
    return state_dir() / "kwok"


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
    return state_dir() / ("kind-kubeconfig" if mode == MODE_KIND else "kubeconfig")


def kubectl_path(build_missing: bool = True) -> Path:
    """The kubectl built at the cluster's version (built first when missing and allowed)."""
    path = versions.path_of("kubectl")
    if not path.is_file() and build_missing:
        build.ensure_built(("kubernetes",))
    return path


def kwok_env() -> dict[str, str]:
    """kwokctl's environment: its workdir, and the pinned kubectl first on PATH (kwokctl runs
    ``kubectl get --raw /version`` from PATH to wait for the API; /usr/bin/kubectl is too old)."""
    path = f"{versions.path_of('kubectl').parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "KWOK_WORKDIR": str(kwok_workdir()), "PATH": path}


def logs_dir() -> Path:
    return kwok_workdir() / "clusters" / CLUSTER_NAME / "logs"


def _component_pids() -> dict[str, int]:
    """Component name -> pid, from the pid files kwokctl writes."""
    pids = {}
    for pid_file in (kwok_workdir() / "clusters" / CLUSTER_NAME / "pids").glob("*.pid"):
        try:
            pids[pid_file.stem] = int(pid_file.read_text().strip())
        except ValueError:
            pids[pid_file.stem] = -1
    return pids


def dead_components() -> list[str]:
    """Components whose recorded process is gone (or a zombie)."""
    return sorted(name for name, pid in _component_pids().items() if pid <= 0 or not pid_alive(pid))


def logs_tail(lines: int = 20, width: int = 400) -> str:
    """The last lines of every component log of the local cluster (dead components first)."""
    node = realnode.log_tail(netns.instance(), lines, width)
    if not logs_dir().is_dir():
        return f"(no logs under {logs_dir()})\n{node}"
    dead = set(dead_components())
    logs = sorted(logs_dir().glob("*.log"), key=lambda p: (p.stem not in dead, p.name))
    parts = []
    for log in logs:
        text = [line[:width] for line in log.read_text(errors="replace").splitlines()[-lines:]]
        state = " DEAD" if log.stem in dead else ""
        parts.append(f"--- {log}{state} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join([*parts, node])


@contextmanager
def _lock() -> Iterator[None]:
    state_dir().mkdir(parents=True, exist_ok=True)
    with open(state_dir() / "cluster.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# health


def api_ready(kubectl: Kubectl) -> bool:
    """``GET /readyz`` answers ok."""
    try:
        return kubectl.run("get", "--raw", "/readyz", timeout=5, check=False).stdout.strip() == "ok"
    except KubectlError:
        return False


def wait_ready(kubectl: Kubectl, timeout: float = 90.0, on_error: str = "") -> None:
    """Wait for /readyz, every node Ready and the ``default`` ServiceAccount in ``default``."""
    try:
        wait_until(lambda: api_ready(kubectl), timeout, "kube-apiserver /readyz")
        nodes.wait_nodes_ready(kubectl, timeout=timeout)
        wait_until(lambda: kubectl.in_namespace("default").get_or_none("serviceaccount", "default"),
                   timeout, "ServiceAccount default/default")
    except AssertionError as exc:
        raise ClusterError(f"{exc}\n{on_error}") from None


# ---------------------------------------------------------------------------------------------
# local kwok cluster


def _kwokctl(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    cmd = [str(versions.path_of("kwokctl")), *args]
    return subprocess.run(cmd, env=kwok_env(), capture_output=True, text=True, timeout=timeout)


def _local_exists() -> bool:
    return (kwok_workdir() / "clusters" / CLUSTER_NAME).is_dir()


def _components_alive() -> bool:
    """Every process kwokctl recorded in ``pids/`` still exists (an API answering /readyz is not
    enough: a dead kwok-controller leaves nodes Ready until their leases expire)."""
    return bool(_component_pids()) and not dead_components()


def pki_dir() -> Path:
    """Where kwokctl keeps the cluster's CA and admin certificate."""
    return kwok_workdir() / "clusters" / CLUSTER_NAME / "pki"


def _write_local_config(api_port: int) -> Path:
    binaries = {b.name: versions.binary_path(b) for b in versions.BINARIES}
    docs = config.kwokctl_config(binaries, config.load_stages(), kube_version=versions.KUBERNETES_VERSION,
                                 node_ip=nodeconfig.NODE_IP, pki_dir=pki_dir(), apiserver_port=api_port)
    path = state_dir() / "kwokctl.yaml"
    path.write_text(config.dump_documents(docs))
    return path


def _stop_local() -> None:
    """Stop the node, the control plane and every process left in the namespaces; keep the logs."""
    inst = netns.instance()
    realnode.stop(inst)
    if versions.path_of("kwokctl").is_file() and _local_exists():
        _kwokctl("stop", "cluster", "--name", CLUSTER_NAME, timeout=120)
    netns.destroy(inst)


def _local_delete() -> None:
    """Tear everything down: no process, mount, namespace or cgroup of the instance remains."""
    inst = netns.instance()
    realnode.stop(inst)
    if versions.path_of("kwokctl").is_file() and _local_exists():
        proc = _kwokctl("delete", "cluster", "--name", CLUSTER_NAME, timeout=120)
        if proc.returncode != 0:
            raise ClusterError(f"kwokctl delete cluster failed:\n{proc.stdout}{proc.stderr}")
    netns.destroy(inst)
    shutil.rmtree(kwok_workdir() / "clusters" / CLUSTER_NAME, ignore_errors=True)
    shutil.rmtree(inst.state, ignore_errors=True)
    kubeconfig_path(MODE_LOCAL).unlink(missing_ok=True)


def cannot_host(problems: Sequence[str]) -> str:
    """The error for a machine without what the real node needs, with the way out."""
    reasons = "\n".join(f"  - {p}" for p in problems)
    return (f"this machine cannot host the local cluster's real node:\n{reasons}\n"
            "Run the same tests on kind instead (needs Docker or Podman): LEPTON_E2E_CLUSTER=kind make test; "
            "or point LEPTON_E2E_KUBECONFIG at an existing cluster.")


def _local_create(timeout: float) -> None:
    """``kwokctl create cluster``; fail fast (with logs) when a component dies meanwhile.

    kwokctl itself waits up to ~30 s per component for an API that may never come (e.g. a bad
    flag made kube-apiserver exit), so its child processes are watched while it runs.
    """
    problems = realnode.host_problems()
    if problems:
        raise ClusterError(cannot_host(problems))
    build.ensure_built(("node", "coredns"))
    node_images = realnode.node_images()
    inst = netns.instance()
    netns.destroy(inst)  # whatever a killed run left behind
    shutil.rmtree(inst.state, ignore_errors=True)
    netns.create(inst, inst.state / "sysctl")
    api_port = free_port()
    kubeconfig = kubeconfig_path(MODE_LOCAL)
    kubeconfig.unlink(missing_ok=True)
    cfg = _write_local_config(api_port)
    try:
        realnode.start_forwarder(inst, api_port)
    except realnode.NodeError as exc:
        _stop_local()
        raise ClusterError(str(exc)) from None
    cmd = [*inst.network_argv(), str(versions.path_of("kwokctl")), "create", "cluster", "--name", CLUSTER_NAME,
           "--config", str(cfg), "--kubeconfig", str(kubeconfig)]
    out_path = state_dir() / "kwokctl-create.log"
    deadline = time.monotonic() + timeout
    with out_path.open("w") as out:
        proc = subprocess.Popen(cmd, env=kwok_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        problem = ""
        while proc.poll() is None:
            dead = dead_components()
            if dead:
                problem = f"{', '.join(dead)} exited while kwokctl was starting the cluster"
            elif time.monotonic() > deadline:
                problem = f"kwokctl create cluster did not finish in {timeout:.0f} s"
            if problem:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.3)
    if not problem and proc.returncode != 0:
        problem = f"kwokctl create cluster failed (exit {proc.returncode})"
    if problem:
        kwokctl_out = "\n".join(out_path.read_text(errors="replace").splitlines()[-15:])
        message = f"{problem}\n--- {out_path}\n{kwokctl_out}\n{logs_tail()}"
        _stop_local()  # keep the logs, stop the rest
        raise ClusterError(message)
    try:
        realnode.start(inst, pki_dir(), api_port, node_images)
    except (realnode.NodeError, OSError, subprocess.SubprocessError) as exc:
        message = f"the real node did not start: {exc}"
        _stop_local()
        raise ClusterError(message) from None


def _up_local(cpu_nodes: int | None, gpu_nodes: int | None, timeout: float) -> Cluster:
    start = time.monotonic()
    build.ensure_built()
    kubeconfig = kubeconfig_path(MODE_LOCAL)
    k = Kubectl(versions.path_of("kubectl"), kubeconfig)
    inst = netns.instance()
    created = False
    if not (kubeconfig.is_file() and _local_exists() and _components_alive() and realnode.running(inst)
            and api_ready(k)):
        if _local_exists() or inst.run_dir.exists():
            build.log("found a stale local cluster; deleting it")
            _local_delete()
        build.log("creating local cluster 'lepton' (kwokctl --runtime binary) with a real node")
        _local_create(timeout)
        created = True
    try:
        wait_until(lambda: api_ready(k), timeout, "kube-apiserver /readyz")
        nodes.wait_nodes_ready(k, [nodeconfig.NODE_NAME], timeout)
        build.log(f"real node {nodeconfig.NODE_NAME} Ready {time.monotonic() - start:.1f} s after start")
        nodes.ensure_nodes(k, cpu_nodes, gpu_nodes, timeout=timeout)
        realnode.install_dns(k, timeout)
    except (AssertionError, KubectlError) as exc:
        raise ClusterError(f"local cluster did not become ready: {exc}\n{logs_tail()}") from None
    wait_ready(k, timeout, on_error=logs_tail())
    return Cluster(MODE_LOCAL, CLUSTER_NAME, kubeconfig, versions.path_of("kubectl"), created, True,
                   real_node=nodeconfig.NODE_NAME, network=tuple(inst.network_argv()))


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
            cluster = _up_local(cpu_nodes, gpu_nodes, timeout)
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
        existed = _local_exists()
        _local_delete()
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
