"""The local cluster: kwokctl's control plane, kwok nodes and one real node, in their own namespace.

``create`` prepares the real node's parts (host check, binaries, images), makes the network and
mount namespaces (:mod:`localcluster.netns`), starts the port forwarder, runs
``kwokctl create cluster --runtime binary`` *inside* the network namespace (its components
inherit it), then the real node (:mod:`localcluster.realnode`) and, once the node has registered,
its NetworkPolicy enforcer (:mod:`localcluster.kuberouter`, waited on until its first rule sync,
so a policy created by any later test is enforced). kwokctl's own child processes
are watched while it runs, so a component that dies fails the start at once, with the tail of
every log. ``up`` reuses a healthy cluster (every kwokctl component and node process alive, the
API ready) or deletes and recreates it; it then tops up the kwok node pool, installs CoreDNS and
waits for every node. ``delete`` stops the node and the control plane and sweeps the namespaces:
no process, mount, namespace or cgroup of the instance survives it.

State: ``KWOK_WORKDIR=<state>/kwok`` (kwokctl's clusters, pids and logs), ``<state>/kubeconfig``,
``<state>/node`` (the real node), ``<state>/admission.yaml``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from localcluster import build, config, images, kuberouter, netns, nodeconfig, nodes, realnode, storage, versions
from localcluster.handle import MODE_LOCAL, Cluster, ClusterError, api_ready, wait_ready
from localcluster.kube import Kubectl, KubectlError, wait_until
from localcluster.lepton import free_port
from localcluster.paths import state_dir
from localcluster.sharing import pid_alive

CLUSTER_NAME = "lepton"


def kubeconfig() -> Path:
    return state_dir() / "kubeconfig"


def workdir() -> Path:
    return state_dir() / "kwok"


def env() -> dict[str, str]:
    """kwokctl's environment: its workdir, and the pinned kubectl first on PATH (kwokctl runs
    ``kubectl get --raw /version`` from PATH to wait for the API; /usr/bin/kubectl is too old)."""
    path = f"{versions.path_of('kubectl').parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "KWOK_WORKDIR": str(workdir()), "PATH": path}


def logs_dir() -> Path:
    return workdir() / "clusters" / CLUSTER_NAME / "logs"


def pids_dir() -> Path:
    """Where kwokctl writes one ``<component>.pid`` per control-plane process."""
    return workdir() / "clusters" / CLUSTER_NAME / "pids"


def component_pids() -> dict[str, int]:
    """Component name -> pid, from the pid files kwokctl writes."""
    pids = {}
    for pid_file in pids_dir().glob("*.pid"):
        try:
            pids[pid_file.stem] = int(pid_file.read_text().strip())
        except ValueError:
            pids[pid_file.stem] = -1
    return pids


def dead_components() -> list[str]:
    """Components whose recorded process is gone (or a zombie)."""
    return sorted(name for name, pid in component_pids().items() if pid <= 0 or not pid_alive(pid))


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


def _kwokctl(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    cmd = [str(versions.path_of("kwokctl")), *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


def exists() -> bool:
    return (workdir() / "clusters" / CLUSTER_NAME).is_dir()


def components_alive() -> bool:
    """Every process kwokctl recorded in ``pids/`` still exists (an API answering /readyz is not
    enough: a dead kwok-controller leaves nodes Ready until their leases expire)."""
    return bool(component_pids()) and not dead_components()


def pki_dir() -> Path:
    """Where kwokctl keeps the cluster's CA and admin certificate."""
    return workdir() / "clusters" / CLUSTER_NAME / "pki"


def write_config(api_port: int) -> Path:
    binaries = {b.name: versions.binary_path(b) for b in versions.BINARIES}
    admission = state_dir() / "admission.yaml"
    admission.write_text(config.dump_documents([config.admission_configuration()]))
    docs = config.kwokctl_config(binaries, config.load_stages(), kube_version=versions.KUBERNETES_VERSION,
                                 node_ip=nodeconfig.NODE_IP, pki_dir=pki_dir(), admission_config=admission,
                                 apiserver_port=api_port)
    path = state_dir() / "kwokctl.yaml"
    path.write_text(config.dump_documents(docs))
    return path


def stop() -> None:
    """Stop the node, the control plane and every process left in the namespaces; keep the logs."""
    inst = netns.instance()
    realnode.stop(inst)
    if versions.path_of("kwokctl").is_file() and exists():
        _kwokctl("stop", "cluster", "--name", CLUSTER_NAME, timeout=120)
    netns.destroy(inst)


def delete() -> None:
    """Tear everything down: no process, mount, namespace or cgroup of the instance remains."""
    inst = netns.instance()
    realnode.stop(inst)
    if versions.path_of("kwokctl").is_file() and exists():
        proc = _kwokctl("delete", "cluster", "--name", CLUSTER_NAME, timeout=120)
        if proc.returncode != 0:
            raise ClusterError(f"kwokctl delete cluster failed:\n{proc.stdout}{proc.stderr}")
    netns.destroy(inst)
    shutil.rmtree(workdir() / "clusters" / CLUSTER_NAME, ignore_errors=True)
    shutil.rmtree(inst.state, ignore_errors=True)
    kubeconfig().unlink(missing_ok=True)


def cannot_host(problems: Sequence[str]) -> str:
    """The error for a machine without what the real node needs, with the way out."""
    reasons = "\n".join(f"  - {p}" for p in problems)
    return (f"this machine cannot host the local cluster's real node:\n{reasons}\n"
            "Run the same tests on kind instead (needs Docker or Podman): LEPTON_E2E_CLUSTER=kind make test; "
            "or point LEPTON_E2E_KUBECONFIG at an existing cluster.")


def _prepare_node() -> tuple[netns.Instance, realnode.NodeImages]:
    """Check the host, build what is missing, clear a killed run's leftovers, make the namespaces."""
    problems = realnode.host_problems()
    if problems:
        raise ClusterError(cannot_host(problems))
    build.ensure_built(("node", "coredns", "storage", "netpol"))
    inst = netns.instance()
    try:
        node_images = realnode.node_images()
        netns.destroy(inst)
        shutil.rmtree(inst.state, ignore_errors=True)
        netns.create(inst, inst.state / "sysctl")
    except (images.ImageError, netns.NamespaceError, OSError, subprocess.SubprocessError) as exc:
        netns.destroy(inst)
        raise ClusterError(f"could not prepare the real node: {exc}") from None
    return inst, node_images


def _run_kwokctl(inst: netns.Instance, cfg: Path, timeout: float) -> None:
    """``kwokctl create cluster`` inside the namespace; fail fast when a component dies meanwhile.

    kwokctl itself waits up to ~30 s per component for an API that may never come (e.g. a bad
    flag made kube-apiserver exit), so its child processes are watched while it runs.
    """
    cmd = [*inst.network_argv(), str(versions.path_of("kwokctl")), "create", "cluster", "--name", CLUSTER_NAME,
           "--config", str(cfg), "--kubeconfig", str(kubeconfig())]
    out_path = state_dir() / "kwokctl-create.log"
    deadline = time.monotonic() + timeout
    problem = ""
    with out_path.open("w") as out:
        proc = subprocess.Popen(cmd, env=env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None and not problem:
            dead = dead_components()
            if dead:
                problem = f"{', '.join(dead)} exited while kwokctl was starting the cluster"
            elif time.monotonic() > deadline:
                problem = f"kwokctl create cluster did not finish in {timeout:.0f} s"
            else:
                time.sleep(0.3)
        if problem:
            proc.kill()
            proc.wait()
    if not problem and proc.returncode != 0:
        problem = f"kwokctl create cluster failed (exit {proc.returncode})"
    if problem:
        kwokctl_out = "\n".join(out_path.read_text(errors="replace").splitlines()[-15:])
        raise ClusterError(f"{problem}\n--- {out_path}\n{kwokctl_out}\n{logs_tail()}")


def create(timeout: float) -> None:
    """Namespaces, port forwarder, control plane, real node; on failure stop it all, keep the logs."""
    start = time.monotonic()
    inst, node_images = _prepare_node()
    api_port = free_port()
    kubeconfig().unlink(missing_ok=True)
    cfg = write_config(api_port)
    phase = "the API port forwarder"
    try:
        realnode.start_forwarder(inst, api_port)
        phase = "the control plane"
        _run_kwokctl(inst, cfg, timeout)
        build.log(f"  namespaces and control plane up in {time.monotonic() - start:.1f} s")
        phase = "the real node"
        realnode.start(inst, pki_dir(), api_port, node_images)
        build.log(f"  containerd, kubelet and kube-proxy up in {time.monotonic() - start:.1f} s")
        phase = "the NetworkPolicy enforcer"
        kuberouter.start(inst, pki_dir(), api_port, Kubectl(versions.path_of("kubectl"), kubeconfig()))
        build.log(f"  kube-router's NetworkPolicy controller synced {time.monotonic() - start:.1f} s after start")
    except (ClusterError, realnode.NodeError, KubectlError, AssertionError, OSError,
            subprocess.SubprocessError) as exc:
        stop()
        raise ClusterError(f"{phase} did not start: {exc}") from None


def up(cpu_nodes: int | None, gpu_nodes: int | None, timeout: float) -> Cluster:
    start = time.monotonic()
    build.ensure_built()
    kubeconfig_file = kubeconfig()
    k = Kubectl(versions.path_of("kubectl"), kubeconfig_file)
    inst = netns.instance()
    created = False
    if not (kubeconfig_file.is_file() and exists() and components_alive() and realnode.running(inst)
            and api_ready(k)):
        if exists() or inst.run_dir.exists():
            build.log("found a stale local cluster; deleting it")
            delete()
        build.log("creating local cluster 'lepton' (kwokctl --runtime binary) with a real node")
        create(timeout)
        created = True
    try:
        wait_until(lambda: api_ready(k), timeout, "kube-apiserver /readyz")
        nodes.wait_nodes_ready(k, [nodeconfig.NODE_NAME], timeout)
        build.log(f"real node {nodeconfig.NODE_NAME} Ready {time.monotonic() - start:.1f} s after start")
        nodes.ensure_nodes(k, cpu_nodes, gpu_nodes, timeout=timeout)
        realnode.install_dns(k, timeout)
        storage.install(k, storage.volumes_dir(inst), timeout)
    except (AssertionError, KubectlError) as exc:
        raise ClusterError(f"local cluster did not become ready: {exc}\n{logs_tail()}") from None
    wait_ready(k, timeout, on_error=logs_tail())
    return Cluster(MODE_LOCAL, CLUSTER_NAME, kubeconfig_file, versions.path_of("kubectl"), created, True,
                   real_node=nodeconfig.NODE_NAME, network=tuple(inst.network_argv()))
