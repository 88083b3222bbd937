"""Teardown leaves nothing behind, and two local clusters run side by side.

A second local cluster instance (its own state directory, hence its own network and mount
namespaces, cgroup root and ports) is brought up and down with the same CLI users run, while the
session's cluster keeps running. Afterwards no process, host mount, namespace or cgroup of that
instance may remain (kube-router, the NetworkPolicy enforcer, included: it must be seen running
first), and the host's ``ip_forward``, the sysctls the kubelet writes, its iptables, ipsets, links
and routes must be exactly as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import localcluster
from localcluster import netns, nodeconfig
from localcluster.kube import Kubectl, node_ready

pytestmark = pytest.mark.e2e


def host_state() -> dict[str, str]:
    """What the host's network and kernel settings look like (none of it may change)."""
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    iptables = [line for line in run("iptables-save").splitlines() if not line.startswith("#")]
    return {
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
        **{name: (Path("/proc/sys") / name).read_text() for name in netns.KUBELET_SYSCTLS},
        "iptables": "\n".join(line.split(" [", 1)[0] for line in iptables),
        "ipsets": run("ipset", "list", "-name"),
        "links": "\n".join(line.split(":")[1] for line in run("ip", "-o", "link").splitlines()),
        "routes": run("ip", "route"),
    }


def test_second_instance_comes_up_beside_the_session_cluster_and_leaves_nothing(
        cluster: localcluster.Cluster, cluster_kubectl: Kubectl) -> None:
    if cluster.mode != "local":
        pytest.skip("tears down the local cluster's namespaces; kind and existing clusters have none")
    state = localcluster.state_dir() / "teardown-test"  # stable: its containerd keeps imported images
    inst = netns.instance(state)
    env = {**os.environ, "LEPTON_STATE_DIR": str(state), "LEPTON_E2E_CPU_NODES": "0", "LEPTON_E2E_GPU_NODES": "1"}
    before = host_state()

    def cli(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "localcluster", command], env=env, capture_output=True,
                              text=True, timeout=300)

    up = cli("up")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        inodes = netns.recorded_inodes(inst)
        running = netns.leftovers(inst, inodes)
        assert all(running.values()), f"the audit must see the running instance: {running}"
        assert any(p.endswith(" kube-router") for p in running["processes"]), running["processes"]
        second = Kubectl(cluster.kubectl_binary, up.stdout.strip())
        nodes = {n["metadata"]["name"]: node_ready(n) for n in second.get("nodes")}
        assert nodes == {nodeconfig.NODE_NAME: True, "kwok-gpu-0": True}
        assert cluster_kubectl("get", "--raw", "/readyz") == "ok"  # the session's cluster is undisturbed
        assert host_state() == before
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr[-3000:]
    assert netns.leftovers(inst, inodes) == {"processes": [], "mounts": [], "cgroups": [], "namespace files": []}
    assert not any((h / "kubepods").exists() for h in netns.cgroup_hierarchies())
    assert host_state() == before
