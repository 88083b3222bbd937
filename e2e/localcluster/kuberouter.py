"""The real node's NetworkPolicy enforcer: kube-router's network policy controller, alone.

**Test harness only, never in what users install**: kube-router v2.1.0 is the only release of
``github.com/cloudnativelabs/kube-router/v2`` on the Go module proxy, and security flaws are
reported for it. It is here so that the NetworkPolicies the operator renders are enforced on
real pods in e2e, not checked by shape.

Why kube-router: SIG Network's ``kube-network-policies`` (what kind ships) needs the nftables
``queue`` expression, which this kernel lacks; kube-router's controller is iptables + ipset (the
``set`` match and target exist here) and is the one k3s embeds.

How it runs (as kube-proxy does, see :mod:`localcluster.realnode`):

* ``--run-firewall=true --run-router=false --run-service-proxy=false``: only the policy
  controller; routing stays with the CNI bridge, Services with kube-proxy.
* In the cluster's **network namespace only**: with the router and proxy off it writes no file
  and no sysctl, only iptables rules and ipsets, which die with the namespace.
* The same iptables backend as kube-proxy: both exec ``iptables``, ``iptables-save``,
  ``iptables-restore`` (and kube-router ``ipset``) from ``PATH``, which Debian's alternatives
  point at ``iptables-nft``. Rules land in nf_tables through the xtables compatibility layer
  (``-m set``, ``-m addrtype``, ``-m physdev``, ``NFLOG``, ``REJECT`` all work there).
* Its own client certificate (``CN=lepton:kube-router``) bound to a ClusterRole with exactly what
  it reads: its shared informers list and watch pods, namespaces, NetworkPolicies, nodes,
  services, endpoints and EndpointSlices (all started even with the router and proxy off), and it
  gets its Node at start. The Node must exist before it starts (it reads the node's InternalIP to
  find local pods by ``status.hostIP``); it needs no podCIDR.
* ``--service-cluster-ip-range`` is the cluster's: traffic to Service IPs is let through before
  DNAT, the policy is applied to the pod IP after it.

Ready means synced: its health port answers once its informers have synced, but the rules come
with the first full sync after that. :func:`synced` therefore looks at the namespace's filter
table for the ``ACCEPT`` of policy-compliant traffic that only a completed full sync writes into
``KUBE-ROUTER-FORWARD``. Once that is there, a NetworkPolicy (or pod, or namespace) event triggers
a full sync at once; :data:`IPTABLES_SYNC_PERIOD` bounds the time a missed event can go
unnoticed. Measured here (6 creates on the 2-core machine): a policy's chain is in the filter
table 20-70 ms after ``kubectl create`` returns; one full sync takes about 80 ms; the cluster is
synced about 1 s after kube-router starts.

Denied traffic is **rejected** (``REJECT``, ICMP port unreachable, so a TCP client sees
"connection refused" at once), not dropped, and logged with ``NFLOG`` group 100.

Beside kube-proxy: kube-router keeps its jump at the top of the filter table's ``FORWARD``,
``INPUT`` and ``OUTPUT`` and ends each pod's chain with an ``ACCEPT``, so kube-proxy's filter
rules after it (the ``REJECT`` of a Service without endpoints) no longer see pod traffic; and it
rewrites the whole filter table at each sync (``iptables-save`` then ``iptables-restore``), so a
filter rule kube-proxy writes in between waits for kube-proxy's next sync. Seen: a pod's connection
to a Service without endpoints now times out instead of being refused. Service routing lives in
the ``nat`` table, which kube-router leaves alone. k3s runs the same pair.

**Traffic from the node itself is always allowed.** Every pod's chain starts with
``-m addrtype --src-type LOCAL -d <pod IP> -j ACCEPT``: a packet whose source address is one of
the namespace's own (the node IP ``10.77.0.1``, ``127.0.0.1``, the bridge gateway ``10.244.0.1``)
passes whatever the policies say. So kubelet probes, and any *host process* inside the cluster's
network namespace (the port forwarder, a Prometheus or an operator run as a host process, the
tests' ``cluster.run_in_network``), reach every pod even where a policy admits only some pods or
namespaces. A policy's effect on the operator or Prometheus can only be proven when they run as
pods; a host-process client proves nothing about isolation.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from localcluster import config, netns, nodeconfig, realnode, versions
from localcluster.kube import Kubectl, wait_until

PROCESS = realnode.KUBE_ROUTER
#: The client certificate's user, bound to :func:`rbac_manifests`' ClusterRole.
USER = "lepton:kube-router"
#: kube-router's health port (its default), on every address of the cluster's namespace.
HEALTH_PORT = 20244
#: Periodic full sync; events (policy, pod, namespace) trigger one at once, so this only bounds
#: how long a missed event could leave rules stale. A full sync here takes well under a second.
IPTABLES_SYNC_PERIOD = "15s"
#: Written only by a completed full sync (kube-router's ``ensureExplicitAccept``).
SYNCED_RULE_COMMENT = "rule to explicitly ACCEPT traffic that comply to network policies"
FORWARD_CHAIN = "KUBE-ROUTER-FORWARD"


def command_line(binary: Path, kubeconfig: Path, *, node_name: str = nodeconfig.NODE_NAME,
                 service_cidr: str = config.SERVICE_CIDR, health_port: int = HEALTH_PORT,
                 sync_period: str = IPTABLES_SYNC_PERIOD) -> list[str]:
    """kube-router as a NetworkPolicy controller only (no BGP routing, no service proxy)."""
    return [str(binary), "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
            f"--kubeconfig={kubeconfig}", f"--hostname-override={node_name}",
            f"--service-cluster-ip-range={service_cidr}", f"--health-port={health_port}",
            f"--iptables-sync-period={sync_period}", "--v=1"]


def rbac_manifests(user: str = USER) -> list[dict[str, Any]]:
    """ClusterRole and binding with what kube-router's informers and its node lookup read."""
    name = user
    rules = [
        {"apiGroups": [""], "resources": ["pods", "namespaces", "services", "endpoints"],
         "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]},
    ]


def synced(filter_table: str) -> bool:
    """Whether ``iptables-save -t filter`` output shows a completed kube-router full sync."""
    return any(line.startswith(f"-A {FORWARD_CHAIN} ") and SYNCED_RULE_COMMENT in line
               for line in filter_table.splitlines())


def filter_table(inst: netns.Instance) -> str:
    """The filter table of the cluster's network namespace (``iptables-save``: the nft backend)."""
    proc = subprocess.run([*inst.network_argv(), "iptables-save", "-t", "filter"], capture_output=True,
                          text=True, timeout=30)
    return proc.stdout if proc.returncode == 0 else ""


def start(inst: netns.Instance, pki: Path, api_port: int, kubectl: Kubectl, timeout: float = 60.0) -> None:
    """RBAC, a client certificate, then kube-router once the node exists; returns after its first sync."""
    kubectl.in_namespace(None).apply(rbac_manifests(), "--server-side", "--force-conflicts")
    certs = realnode.base_dir(inst) / "pki"
    crt, key = realnode.sign_client_cert(pki, certs, PROCESS, f"/CN={USER}")
    kubeconfig = realnode.write_file(realnode.base_dir(inst) / "kube-router.kubeconfig", yaml.safe_dump(
        nodeconfig.kubeconfig(f"https://127.0.0.1:{api_port}", pki / "ca.crt", crt, key, PROCESS)))
    wait_until(lambda: kubectl.in_namespace(None).get_or_none("node", nodeconfig.NODE_NAME), timeout,
               f"node {nodeconfig.NODE_NAME} registered (kube-router reads it at start)")
    proc = realnode.spawn(inst, PROCESS, [*inst.network_argv(),
                                          *command_line(versions.path_of("kube-router"), kubeconfig)])
    realnode.await_ready(proc, inst, PROCESS, lambda: synced(filter_table(inst)),
                         "kube-router's first NetworkPolicy sync", timeout)
