"""The local cluster's real node runs real containers beside the kwok GPU nodes.

Pods in ``real_namespace`` (no kwok annotations) land on the real node and run busybox for real:
their output comes back through ``kubectl logs`` (API server -> kubelet, webhook-authorized),
they resolve each other through CoreDNS, reach each other through kube-proxy's ClusterIP rules,
and share a PVC-backed hostPath volume. Pods in the kwok-steered ``namespace`` still land on kwok
nodes, GPU pods on kwok GPU nodes. On kind the same pods run on its workers (pulling busybox).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import localcluster
from localcluster import config, nodeconfig, realnode, storage
from localcluster.kube import Kubectl, condition_true, pod_phase, wait_until

pytestmark = pytest.mark.e2e

TIMEOUT = 90.0
HTTP_PORT = 8080


@pytest.fixture(scope="module")
def busybox(cluster: localcluster.Cluster) -> str:
    """The busybox image the node has (built and imported by the harness; pulled on kind)."""
    return realnode.BUSYBOX_REF if cluster.real_node else "busybox:1.36"


@pytest.fixture
def real(cluster_kubectl: Kubectl, real_namespace: str) -> Kubectl:
    return cluster_kubectl.in_namespace(real_namespace)


def busybox_pod(name: str, image: str, script: str, *, labels: dict[str, str] | None = None,
                **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [container], "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                     **spec}}


def http_server(name: str, image: str, body: str, **spec: Any) -> dict[str, Any]:
    """busybox httpd serving ``body`` at ``/`` on :data:`HTTP_PORT`, Ready once it answers."""
    pod = busybox_pod(name, image, f"mkdir -p /www && echo '{body}' > /www/index.html && "
                                   f"exec httpd -f -p {HTTP_PORT} -h /www", labels={"app": name}, **spec)
    pod["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": HTTP_PORT}, "periodSeconds": 1}
    return pod


def wait_phase(kubectl: Kubectl, name: str, *phases: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod: dict[str, Any] = kubectl.json("get", "pod", name)
        return pod if pod_phase(pod) in phases else None
    return wait_until(check, TIMEOUT, f"pod {name} {'/'.join(phases)}")


def wait_ready(kubectl: Kubectl, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod: dict[str, Any] = kubectl.json("get", "pod", name)
        return pod if condition_true(pod, "Ready") else None
    return wait_until(check, TIMEOUT, f"pod {name} Ready")


def succeeded_logs(kubectl: Kubectl, name: str) -> str:
    """Logs of a pod that must finish Succeeded (its logs are shown when it failed)."""
    pod = wait_phase(kubectl, name, "Succeeded", "Failed")
    logs = kubectl("logs", name)
    assert pod_phase(pod) == "Succeeded", f"pod {name} failed:\n{logs}"
    return logs


def test_real_node_is_ready_beside_kwok_nodes(cluster: localcluster.Cluster, cluster_kubectl: Kubectl) -> None:
    if cluster.real_node is None:
        pytest.skip("only the local cluster has a designated real node; kind's workers are all real")
    nodes = {n["metadata"]["name"]: n for n in cluster_kubectl.get("nodes")}
    node = nodes[cluster.real_node]
    assert condition_true(node, "Ready")
    assert node["metadata"]["labels"][nodeconfig.NODE_KIND_LABEL] == "real"
    assert config.KWOK_NODE_ANNOTATION not in node["metadata"].get("annotations", {})  # kwok leaves it alone
    assert node["spec"]["taints"] == [config.REAL_NODE_TAINT]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert {"type": "InternalIP", "address": nodeconfig.NODE_IP} in node["status"]["addresses"]
    kwok = [n for name, n in nodes.items() if name != cluster.real_node]
    assert kwok and all(condition_true(n, "Ready") for n in kwok)
    for n in kwok:
        gpu = n["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"
        assert n["spec"]["taints"] == [config.GPU_TAINT if gpu else config.KWOK_TAINT]


def test_busybox_pod_runs_on_the_real_node(cluster: localcluster.Cluster, real: Kubectl, busybox: str) -> None:
    real.create(busybox_pod("hello", busybox, "echo hello from $(hostname); cat /proc/self/cgroup | head -1"))
    logs = succeeded_logs(real, "hello")
    assert "hello from hello" in logs
    pod = real.json("get", "pod", "hello")
    if cluster.real_node:
        assert pod["spec"]["nodeName"] == cluster.real_node
        assert pod["status"]["podIP"].startswith(nodeconfig.POD_CIDR.rsplit(".", 2)[0])


def test_pod_resolves_a_headless_service_name_through_coredns_and_connects(real: Kubectl, busybox: str) -> None:
    ns = real.namespace
    real.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "server"},
                         "ports": [{"port": HTTP_PORT}]}})
    real.create(http_server("server", busybox, "hello over dns", hostname="server-0", subdomain="peers"))
    server_ip = wait_ready(real, "server")["status"]["podIP"]
    fqdn = f"server-0.peers.{ns}.svc.cluster.local"
    real.create(busybox_pod("client", busybox,
                            f"for i in $(seq 30); do nslookup {fqdn} && break; sleep 1; done; "
                            f"wget -q -O - http://{fqdn}:{HTTP_PORT}/"))
    logs = succeeded_logs(real, "client")
    assert server_ip in logs, logs  # nslookup answered with the server pod's IP
    assert "hello over dns" in logs


def test_pod_reaches_a_cluster_ip_service(cluster: localcluster.Cluster, real: Kubectl, busybox: str) -> None:
    real.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": HTTP_PORT}]}})
    real.create(http_server("web", busybox, "hello over a service"))
    wait_ready(real, "web")
    cluster_ip = real.json("get", "service", "web")["spec"]["clusterIP"]
    # kube-proxy programs the Service shortly after its endpoint turns ready, and until then
    # rejects it ("No route to host"): the client waits for that (bounded), then reads twice.
    # (busybox's wget -T segfaults on a refused connect: the loop bounds the wait instead)
    programmed = f"i=0; until wget -q -O - http://{cluster_ip}/ >/dev/null; do i=$((i+1)); [ $i -lt 60 ] || exit 1; sleep 0.5; done"
    real.create(busybox_pod("client", busybox,
                            f"{programmed}; wget -q -O - http://{cluster_ip}/ && wget -q -O - http://web/"))
    assert succeeded_logs(real, "client").count("hello over a service") == 2
    if cluster.network:  # the harness reaches Service IPs from the host through the namespace
        proc = cluster.run_in_network(["python3", "-c", "import urllib.request, sys; "
                                       "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
                                       f"http://{cluster_ip}/"])
        assert "hello over a service" in proc.stdout, proc.stderr


def test_file_written_to_a_pvc_by_one_pod_is_read_by_another(real: Kubectl, busybox: str) -> None:
    """A claim naming no class binds through the default one (dynamic, as kind's ``standard``) and
    non-root pods can write it: what the dataset and checkpoint claims of the operator need."""
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    real.create(claim)
    assert real.json("get", "pvc", "data")["status"]["phase"] == "Pending"  # waits for its first pod
    volume = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
              "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True}}
    mount = [{"name": "data", "mountPath": "/data"}]
    writer = busybox_pod("writer", busybox, "echo written-by-writer > /data/message && id -u", **volume)
    writer["spec"]["containers"][0]["volumeMounts"] = mount
    real.create(writer)
    assert succeeded_logs(real, "writer").strip() == "65532"
    reader = busybox_pod("reader", busybox, "cat /data/message", **volume)
    reader["spec"]["containers"][0]["volumeMounts"] = mount
    real.create(reader)
    assert succeeded_logs(real, "reader").strip() == "written-by-writer"
    bound = real.json("get", "pvc", "data")
    assert bound["status"]["phase"] == "Bound" and bound["spec"]["storageClassName"] == storage.STORAGE_CLASS
    volume_name = bound["spec"]["volumeName"]
    pv = real.in_namespace(None).json("get", "pv", volume_name)
    directory = Path(pv["spec"]["hostPath"]["path"])
    on_this_host = real.json("get", "pod", "reader")["spec"]["nodeName"] == nodeconfig.NODE_NAME
    if on_this_host:
        assert (directory / "message").read_text() == "written-by-writer\n"  # the host's filesystem
    real.delete("pod", "writer", "reader", wait=True)
    real.delete("pvc", "data")
    wait_until(lambda: real.in_namespace(None).get_or_none("pv", volume_name) is None, TIMEOUT,
               "the volume deleted with its claim")
    if on_this_host:
        wait_until(lambda: not directory.exists(), TIMEOUT, "the volume's directory removed")


def test_kwok_namespaces_keep_plain_and_gpu_pods_on_kwok_nodes(cluster: localcluster.Cluster,
                                                               kubectl: Kubectl, busybox: str) -> None:
    if cluster.real_node is None:
        pytest.skip("steering between kwok nodes and the real node exists on the local cluster only")
    kubectl.create(busybox_pod("plain", busybox, "true"))
    gpu = busybox_pod("gpu", busybox, "true", tolerations=[config.GPU_TOLERATION],
                      nodeSelector={config.GPU_PRODUCT_LABEL: config.GPU_PRODUCT})
    gpu["spec"]["containers"][0]["resources"] = {"limits": {config.GPU_RESOURCE: "1"}}
    kubectl.create(gpu)
    for name in ("plain", "gpu"):
        pod = wait_until(lambda: (p := kubectl.json("get", "pod", name))["spec"].get("nodeName") and p,
                         TIMEOUT, f"pod {name} scheduled")
        node = kubectl.in_namespace(None).json("get", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["type"] == "kwok", (name, pod["spec"]["nodeName"])
        if name == "gpu":
            assert node["metadata"]["labels"][config.GPU_PRODUCT_LABEL] == config.GPU_PRODUCT
            assert pod["spec"]["nodeSelector"] == {config.GPU_PRODUCT_LABEL: config.GPU_PRODUCT}  # untouched
    # Even a pod that asks for the real node cannot go there from a kwok namespace.
    kubectl.create(busybox_pod("wants-real", busybox, "true", nodeSelector=dict(nodeconfig.NODE_LABELS)))
    message = wait_until(lambda: next((c.get("message") for c in kubectl.json("get", "pod", "wants-real")
                                       ["status"].get("conditions", []) if c.get("reason") == "Unschedulable"),
                                      None), TIMEOUT, "pod wants-real Unschedulable")
    assert "untolerated taint" in message, message


def test_ordinary_namespaces_send_gpu_pods_to_kwok_gpu_nodes(cluster: localcluster.Cluster, real: Kubectl,
                                                            busybox: str) -> None:
    """What a full-path TrainingJob needs: its GPU workers land on kwok GPU nodes from any namespace."""
    gpu = busybox_pod("gpu", busybox, "true", tolerations=[config.GPU_TOLERATION])
    gpu["spec"]["containers"][0]["resources"] = {"limits": {config.GPU_RESOURCE: "1"}}
    real.create(gpu)
    pod = wait_until(lambda: (p := real.json("get", "pod", "gpu"))["spec"].get("nodeName") and p,
                     TIMEOUT, "pod gpu scheduled")
    node = real.in_namespace(None).json("get", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"
