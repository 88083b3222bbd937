"""Unit tests of the real node's NetworkPolicy enforcer settings (``localcluster.kuberouter``):
its command line, its RBAC, the sign of a completed sync, and how it is built and cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import build, config, kuberouter, nodeconfig, realnode, versions


def test_command_line_runs_only_the_policy_controller_for_the_real_node() -> None:
    argv = kuberouter.command_line(Path("/cache/kube-router"), Path("/state/kr.kubeconfig"))
    assert argv[0] == "/cache/kube-router"
    flags = dict(a.removeprefix("--").split("=", 1) for a in argv[1:])
    assert (flags["run-firewall"], flags["run-router"], flags["run-service-proxy"]) == ("true", "false", "false")
    assert flags["kubeconfig"] == "/state/kr.kubeconfig"
    assert flags["hostname-override"] == nodeconfig.NODE_NAME
    assert flags["service-cluster-ip-range"] == config.SERVICE_CIDR  # not kube-router's 10.96.0.0/12 default
    assert flags["health-port"] == str(kuberouter.HEALTH_PORT)
    assert flags["iptables-sync-period"] == kuberouter.IPTABLES_SYNC_PERIOD


def test_command_line_takes_other_values() -> None:
    argv = kuberouter.command_line(Path("kr"), Path("kc"), node_name="n1", service_cidr="10.1.0.0/16",
                                   health_port=1234, sync_period="1m")
    assert {"--hostname-override=n1", "--service-cluster-ip-range=10.1.0.0/16", "--health-port=1234",
            "--iptables-sync-period=1m"} <= set(argv)


def test_rbac_grants_exactly_what_the_informers_and_node_lookup_read() -> None:
    role, binding = kuberouter.rbac_manifests()
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    read = {(g, r, v) for g, r in [("", "pods"), ("", "namespaces"), ("", "services"), ("", "endpoints"),
                                   ("", "nodes"), ("networking.k8s.io", "networkpolicies"),
                                   ("discovery.k8s.io", "endpointslices")] for v in ("list", "watch")}
    assert granted == read | {("", "nodes", "get")}  # read-only: no write verb anywhere
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": kuberouter.USER}]


SAVE_BEFORE_SYNC = """*filter
:INPUT ACCEPT [0:0]
:KUBE-ROUTER-FORWARD - [0:0]
:KUBE-NWPLCY-DEFAULT - [0:0]
-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD
-A KUBE-NWPLCY-DEFAULT -m comment --comment "rule to mark traffic matching a network policy" -j MARK --set-xmark 0x10000/0x10000
COMMIT
"""
SYNCED_LINE = ('-A KUBE-ROUTER-FORWARD -m comment --comment "rule to explicitly ACCEPT traffic that comply to '
               'network policies" -m mark --mark 0x20000/0x20000 -j ACCEPT')


def test_synced_only_after_a_full_sync_wrote_the_explicit_accept() -> None:
    assert not kuberouter.synced("")
    assert not kuberouter.synced(SAVE_BEFORE_SYNC)  # chains made at start, before the first full sync
    assert kuberouter.synced(SAVE_BEFORE_SYNC.replace("COMMIT", SYNCED_LINE + "\nCOMMIT"))
    other_chain = SYNCED_LINE.replace("KUBE-ROUTER-FORWARD", "KUBE-ROUTER-INPUT")
    assert not kuberouter.synced(SAVE_BEFORE_SYNC.replace("COMMIT", other_chain + "\nCOMMIT"))


def test_kube_router_is_a_node_process_built_with_the_local_cluster(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    assert kuberouter.PROCESS in realnode.PROCESSES  # a cluster without it is not reused, and it is stopped
    assert "netpol" in build.LOCAL_GROUPS
    assert "ipset" in realnode.PACKAGES
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path))
    assert versions.path_of("kube-router") == tmp_path / "bin" / "kube-router-v2.1.0" / "kube-router"
