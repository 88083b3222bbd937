"""Pure renderers for the local cluster's real node: containerd, CNI, kubelet, kube-proxy, CoreDNS.

Nothing here touches the machine; :mod:`localcluster.realnode` writes these files and starts the
processes. Unit-tested in ``e2e/tests/test_localcluster_nodeconfig.py``. The settings follow what
was checked by hand on the project's machines (``shared/REAL-NODE.md``):

* **containerd** (Debian 1.6): private ``root`` (persists between runs, so imported images
  survive), ``state`` and socket; ``restrict_oom_score_adj`` (no CAP_SYS_RESOURCE here); a locally
  built pause image; the ``opt`` plugin off (it would create ``/opt/containerd`` on the host); runc
  state under the node's private ``/run``; CNI binaries from Debian's ``/usr/lib/cni`` and a conf
  dir of our own.
* **CNI**: ``bridge`` (gateway, masquerade, hairpin) with ``host-local`` IPAM, plus ``portmap``.
* **kubelet** (v1.35, cgroup v1 host): ``failCgroupV1: false``, cgroupfs driver, QoS cgroups under
  an instance-specific ``cgroupRoot`` (so two checkouts' nodes never share a cgroup), webhook
  authentication/authorization with the cluster CA, cluster DNS at :data:`DNS_SERVICE_IP`, a
  ``resolvConf`` of our own (the host resolver is unreachable from the node's namespace), image
  GC off (imported images are never pulled back) and eviction thresholds low enough for a shared
  development disk.
* **kube-proxy**: ``iptables`` mode (no IPVS in this kernel), conntrack sysctls left alone
  (``nf_conntrack_max`` cannot be written outside the initial network namespace).
* **CoreDNS** (a pod from a scratch image): the ``kubernetes`` plugin for ``cluster.local`` with
  ``pods insecure``, ``health``, ``ready`` and ``cache``, and no ``forward`` (no upstream is
  reachable). Service ``kube-dns`` at :data:`DNS_SERVICE_IP`.

Addresses: the node's network namespace has one address, :data:`NODE_IP`; it is the API server's
advertise address and the node's InternalIP. Pods get :data:`POD_CIDR`; Services stay in
``config.SERVICE_CIDR``; kwok's fake pods in ``config.FAKE_POD_CIDR``. All of these only exist
inside the namespace, so every instance uses the same ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NODE_NAME = "lepton-node"
NODE_IP = "10.77.0.1"
NODE_PREFIX = 24
POD_CIDR = "10.244.0.0/24"
DNS_SERVICE_IP = "10.0.0.10"
KUBERNETES_SERVICE_IP = "10.0.0.1"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "lepton0"
CNI_BIN_DIR = "/usr/lib/cni"
#: Label of the real node; real workloads may select it.
NODE_KIND_LABEL = "lepton.ai/node-kind"
NODE_LABELS: dict[str, str] = {NODE_KIND_LABEL: "real"}
KUBELET_PORT = 10250
COREDNS_LABELS: dict[str, str] = {"k8s-app": "kube-dns"}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def toml(tables: Mapping[str, Mapping[str, object]]) -> str:
    """A TOML document: ``tables`` maps a dotted table name ("" for the top level) to its keys."""
    lines: list[str] = []
    for name, keys in tables.items():
        if name:
            lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def containerd_config(*, root: Path, state: Path, socket: Path, runc_root: Path, cni_conf_dir: Path,
                      sandbox_image: str) -> str:
    """containerd 1.6 ``config.toml`` (version 2)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return toml({
        "": {"version": 2, "root": str(root), "state": str(state), "oom_score": 0,
             "disabled_plugins": ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
                                  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                                  "io.containerd.snapshotter.v1.aufs"]},
        "grpc": {"address": str(socket)},
        cri: {"sandbox_image": sandbox_image, "restrict_oom_score_adj": True, "enable_selinux": False,
              "stream_server_address": "127.0.0.1", "stream_server_port": "0"},
        f"{cri}.containerd": {"snapshotter": "overlayfs", "default_runtime_name": "runc"},
        f"{cri}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
        f"{cri}.containerd.runtimes.runc.options": {"SystemdCgroup": False, "Root": str(runc_root)},
        f"{cri}.cni": {"bin_dir": CNI_BIN_DIR, "conf_dir": str(cni_conf_dir), "max_conf_num": 1},
    })


def cni_conflist(pod_cidr: str = POD_CIDR, bridge: str = BRIDGE) -> dict[str, Any]:
    """The node's CNI network: a bridge with host-local IPAM, and portmap for hostPorts."""
    return {
        "cniVersion": "0.4.0",
        "name": "lepton",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(*, cgroup_root: str, runtime_socket: Path, client_ca: Path, resolv_conf: Path,
                   node_ip: str = NODE_IP) -> dict[str, Any]:
    """``KubeletConfiguration`` for a cgroup v1 host without CAP_SYS_RESOURCE."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "cgroupRoot": cgroup_root,
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "address": node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv_conf),
        "failSwapOn": False,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                         "imagefs.available": "1%"},
        "maxPods": 110,
        "protectKernelDefaults": False,
        "shutdownGracePeriod": "0s",
    }


def kube_proxy_config(*, kubeconfig: Path, node_name: str = NODE_NAME,
                      cluster_cidr: str = POD_CIDR) -> dict[str, Any]:
    """``KubeProxyConfiguration``: iptables mode, no conntrack sysctl writes."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": cluster_cidr,
        "hostnameOverride": node_name,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> dict[str, Any]:
    """A kubeconfig with one client-certificate user."""
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "node", "context": {"cluster": "local", "user": user}}],
    }


def resolv_conf() -> str:
    """The node's resolver file: no upstream server is reachable from its namespace."""
    return "# lepton real node: cluster DNS only (kubelet adds it); no upstream resolver\noptions ndots:5\n"


# ---------------------------------------------------------------------------------------------
# CoreDNS


COREFILE = f""".:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
}}
"""


def coredns_manifests(image: str, namespace: str = "kube-system") -> list[dict[str, Any]]:
    """ServiceAccount, RBAC, Corefile, Deployment and the ``kube-dns`` Service at the DNS IP."""
    meta = {"name": "coredns", "namespace": namespace, "labels": dict(COREDNS_LABELS)}
    rules = [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
              "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]
    container = {
        "name": "coredns", "image": image, "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10,
                          "failureThreshold": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "30Mi"}, "limits": {"memory": "170Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
    }
    pod_spec = {
        "serviceAccountName": "coredns", "dnsPolicy": "Default", "priorityClassName": "system-cluster-critical",
        "nodeSelector": dict(NODE_LABELS), "terminationGracePeriodSeconds": 1,
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": namespace}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": 1, "selector": {"matchLabels": dict(COREDNS_LABELS)},
                  "template": {"metadata": {"labels": dict(COREDNS_LABELS)}, "spec": pod_spec}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": namespace, "labels": dict(COREDNS_LABELS)},
         "spec": {"clusterIP": DNS_SERVICE_IP, "selector": dict(COREDNS_LABELS),
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}},
    ]
