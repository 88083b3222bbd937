"""Unit tests of the real node's rendered configuration (``localcluster.nodeconfig``) and of the
kwok/real steering in ``localcluster.config``."""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

from localcluster import config, netns, nodeconfig, storage


def test_containerd_config_is_private_and_restricts_oom_score_adj() -> None:
    text = nodeconfig.containerd_config(root=Path("/cache/ctd"), state=Path("/run/x/ctd"),
                                        socket=Path("/run/x/ctd.sock"), runc_root=Path("/run/x/runc"),
                                        cni_conf_dir=Path("/state/cni"), sandbox_image="localhost/lepton/pause:1")
    doc = tomllib.loads(text)
    assert doc["version"] == 2
    assert (doc["root"], doc["state"], doc["grpc"]["address"]) == ("/cache/ctd", "/run/x/ctd", "/run/x/ctd.sock")
    assert "io.containerd.internal.v1.opt" in doc["disabled_plugins"]  # would create /opt/containerd
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == "localhost/lepton/pause:1"
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/state/cni", "max_conf_num": 1}
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"SystemdCgroup": False, "Root": "/run/x/runc"}


def test_cni_conflist_bridges_pods_in_their_own_range() -> None:
    conf = nodeconfig.cni_conflist()
    bridge, portmap = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    [[subnet]] = bridge["ipam"]["ranges"]
    pods = ipaddress.ip_network(subnet["subnet"])
    for other in (config.SERVICE_CIDR, config.FAKE_POD_CIDR, f"{nodeconfig.NODE_IP}/{nodeconfig.NODE_PREFIX}"):
        assert not pods.overlaps(ipaddress.ip_network(other, strict=False)), other
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    json.dumps(conf)  # written as JSON


def test_kubelet_config_for_a_cgroup_v1_host_with_webhook_auth_and_cluster_dns() -> None:
    cfg = nodeconfig.kubelet_config(cgroup_root="/lepton-abc", runtime_socket=Path("/run/n/ctd.sock"),
                                    client_ca=Path("/pki/ca.crt"), resolv_conf=Path("/state/resolv.conf"))
    assert cfg["failCgroupV1"] is False and cfg["cgroupDriver"] == "cgroupfs" and cfg["cgroupsPerQOS"] is True
    assert cfg["cgroupRoot"] == "/lepton-abc"
    assert cfg["containerRuntimeEndpoint"] == "unix:///run/n/ctd.sock"
    assert cfg["authentication"]["webhook"]["enabled"] and not cfg["authentication"]["anonymous"]["enabled"]
    assert cfg["authentication"]["x509"]["clientCAFile"] == "/pki/ca.crt"
    assert cfg["authorization"]["mode"] == "Webhook"
    assert cfg["clusterDNS"] == [nodeconfig.DNS_SERVICE_IP] and cfg["clusterDomain"] == "cluster.local"
    assert cfg["resolvConf"] == "/state/resolv.conf"
    assert cfg["address"] == nodeconfig.NODE_IP and cfg["readOnlyPort"] == 0
    assert cfg["imageGCHighThresholdPercent"] == 100  # imported images can never be pulled back
    assert cfg["registerWithTaints"] == [config.REAL_NODE_TAINT]
    assert ipaddress.ip_address(nodeconfig.DNS_SERVICE_IP) in ipaddress.ip_network(config.SERVICE_CIDR)


def test_kube_proxy_uses_iptables_and_leaves_conntrack_sysctls_alone() -> None:
    cfg = nodeconfig.kube_proxy_config(kubeconfig=Path("/state/kp.kubeconfig"))
    assert cfg["mode"] == "iptables"
    assert cfg["conntrack"]["maxPerCore"] == 0 and cfg["conntrack"]["min"] == 0
    assert cfg["hostnameOverride"] == nodeconfig.NODE_NAME
    assert cfg["clusterCIDR"] == nodeconfig.POD_CIDR
    assert cfg["clientConnection"]["kubeconfig"] == "/state/kp.kubeconfig"


def test_kubeconfig_has_one_certificate_user() -> None:
    kc = nodeconfig.kubeconfig("https://127.0.0.1:6443", Path("/p/ca.crt"), Path("/p/k.crt"), Path("/p/k.key"), "kubelet")
    assert kc["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:6443", "certificate-authority": "/p/ca.crt"}
    assert kc["users"][0] == {"name": "kubelet", "user": {"client-certificate": "/p/k.crt", "client-key": "/p/k.key"}}
    assert kc["contexts"][0]["context"] == {"cluster": "local", "user": "kubelet"}


def test_coredns_serves_the_cluster_domain_at_the_dns_service_ip_on_the_real_node() -> None:
    docs = {d["kind"]: d for d in nodeconfig.coredns_manifests("localhost/lepton/coredns:v1.15.0")}
    assert docs["Service"]["spec"]["clusterIP"] == nodeconfig.DNS_SERVICE_IP
    assert docs["Service"]["metadata"]["name"] == "kube-dns"
    corefile = docs["ConfigMap"]["data"]["Corefile"]
    assert "kubernetes cluster.local" in corefile and "pods insecure" in corefile
    assert "forward" not in corefile  # no upstream is reachable
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == nodeconfig.NODE_LABELS and pod["tolerations"] == [config.REAL_NODE_TOLERATION]
    assert pod["containers"][0]["image"] == "localhost/lepton/coredns:v1.15.0"
    assert pod["containers"][0]["imagePullPolicy"] == "Never"
    resources = {r for rule in docs["ClusterRole"]["rules"] for r in rule["resources"]}
    assert {"endpointslices", "services", "pods", "namespaces"} <= resources


def test_kwokctl_config_advertises_the_node_ip_and_enables_steering() -> None:
    binaries = {n: f"/cache/{n}" for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                           "kubectl", "kwok", "etcd")}
    [kwokctl] = config.kwokctl_config(binaries, [], kube_version="v1.36.3", node_ip="10.77.0.1",
                                      pki_dir=Path("/w/pki"), admission_config=Path("/w/adm.yaml"),
                                      apiserver_port=32123)
    opts = kwokctl["options"]
    assert {"10.0.0.1", "10.77.0.1"} <= set(opts["kubeApiserverCertSANs"])
    assert opts["kubeApiserverPort"] == 32123
    args = {p["name"]: {a["key"]: a["value"] for a in p["extraArgs"]} for p in kwokctl["componentsPatches"]}
    apiserver = args["kube-apiserver"]
    assert apiserver["advertise-address"] == "10.77.0.1"
    assert apiserver["kubelet-preferred-address-types"] == "InternalIP"
    assert apiserver["kubelet-client-certificate"] == "/w/pki/admin.crt"
    assert apiserver["enable-admission-plugins"] == "PodTolerationRestriction"
    assert apiserver["admission-control-config-file"] == "/w/adm.yaml"
    assert "endpoint-reconciler-type" not in apiserver  # pods reach the API through the kubernetes Service


def _tolerates(tolerations: list[dict[str, str]], taint: dict[str, str]) -> bool:
    return any((t["key"], t["value"], t["effect"]) == (taint["key"], taint["value"], taint["effect"])
               for t in tolerations)


def test_steering_by_taints_and_default_tolerations() -> None:
    cpu, gpu = config.cpu_node("c"), config.gpu_node("g")
    assert cpu["spec"]["taints"] == [config.KWOK_TAINT]
    assert gpu["spec"]["taints"] == [config.GPU_TAINT]  # no taint the operator's capacity model ignores
    [plugin] = config.admission_configuration()["plugins"]
    assert plugin["name"] == "PodTolerationRestriction"
    cluster_default = plugin["configuration"]["default"]
    assert _tolerates(cluster_default, config.REAL_NODE_TAINT) and not _tolerates(cluster_default, config.KWOK_TAINT)
    annotations = config.kwok_namespace("ns")["metadata"]["annotations"]
    assert set(annotations) == {config.DEFAULT_TOLERATIONS_ANNOTATION}  # nodeSelectors stay untouched
    kwok_default = json.loads(annotations[config.DEFAULT_TOLERATIONS_ANNOTATION])
    assert _tolerates(kwok_default, config.KWOK_TAINT) and not _tolerates(kwok_default, config.REAL_NODE_TAINT)


def test_instances_of_two_state_directories_never_share_names(tmp_path: Path) -> None:
    a, b = netns.instance(tmp_path / "a"), netns.instance(tmp_path / "b")
    assert a.id != b.id and a.run_dir != b.run_dir and a.cgroup_root != b.cgroup_root
    assert netns.instance(tmp_path / "a") == a
    assert a.network_argv() == ["nsenter", f"--net={a.net_file}", "--"]
    assert a.node_argv()[:3] == ["nsenter", f"--net={a.net_file}", f"--mount={a.mnt_file}"]


def test_storage_is_a_default_class_that_binds_on_first_use_from_local_images(tmp_path: Path) -> None:
    docs = {d["kind"]: d for d in storage.manifests("local/provisioner:1", "local/busybox:1", tmp_path / "volumes")}
    klass = docs["StorageClass"]
    assert klass["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert (klass["provisioner"], klass["volumeBindingMode"], klass["reclaimPolicy"]) == (
        storage.PROVISIONER, "WaitForFirstConsumer", "Delete")
    [container] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == "Never" and "local/busybox:1" in container["args"]
    data = docs["ConfigMap"]["data"]
    assert json.loads(data["config.json"])["nodePathMap"][0]["paths"] == [str(tmp_path / "volumes")]
    assert 'mkdir -m 0777 -p "$VOL_DIR"' in data["setup"]  # non-root pods write hostPath volumes
    assert json.loads(data["helperPod.yaml"])["spec"]["containers"][0]["imagePullPolicy"] == "Never"
