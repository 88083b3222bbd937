"""Prometheus on the local cluster, where a cluster user's Prometheus would be.

A real Prometheus (Debian's 2.42, from ``make tools``) runs inside the cluster's network
namespace, so it scrapes pod IPs as an in-cluster one does, and the cluster finds it where the
Prometheus Operator's Service would be: ``monitoring/prometheus-operated:9090`` (a Service
without a selector and an EndpointSlice to the node's address). That is the URL the shipped
examples give ``spec.autoscaling.prometheus``, so they autoscale here unchanged.

Debian's build has no Kubernetes discovery, so a target syncer (``python -m
localcluster.monitoring sync``, inside the namespace too, with the cluster's kubeconfig) rewrites
two file-based target lists from the pods every second (:func:`target_groups`, pure):

* every Ready InferenceService replica (``lepton.ai/role=server``) on Triton's metrics port,
  labelled as a ServiceMonitor on its Service labels it (``namespace``, ``service``, ``pod``):
  the labels the autoscaler's PromQL selects on; and every Ready activator pod of a
  scale-to-zero service (``lepton.ai/role=activator``, same port, same labels: its
  ``lepton_activator_pending_requests`` is the demand the autoscaler sees at zero replicas);
* every Ready operator pod (``app.kubernetes.io/name=lepton-operator``) on its metrics port.

:func:`ensure` is idempotent (the demo and the e2e suite share one Prometheus) and returns where
it answers on the host, through a forwarder. Prometheus, the syncer and the forwarder are
processes of the cluster's namespace, so its teardown sweeps them; data and logs live in the
instance's state directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import netns, nodeconfig, realnode
from localcluster.handle import MODE_LOCAL, Cluster, ClusterError
from localcluster.kube import Kubectl, wait_until
from localcluster.lepton import free_port, http_ok
from localcluster.sharing import pid_alive

NAMESPACE = "monitoring"
SERVICE = "prometheus-operated"
PORT = 9090
#: What the cluster's pods use (the shipped examples' ``autoscaling.prometheus.url``).
IN_CLUSTER_URL = f"http://{SERVICE}.{NAMESPACE}.svc:{PORT}"
SCRAPE_SECONDS = 1
SYNC_SECONDS = 1.0
#: Triton replicas and activators: both export on the metrics port, labelled by their InferenceService.
SERVER_SELECTOR = "lepton.ai/role in (server,activator),lepton.ai/inferenceservice"
OPERATOR_SELECTOR = "app.kubernetes.io/name=lepton-operator"
TRITON_METRICS_PORT = 8002
OPERATOR_METRICS_PORT = 8080
JOBS = ("triton", "lepton-operator")
PROCESSES = ("prometheus", "prometheus-targets", "prometheus-forwarder")


@dataclass(frozen=True)
class Monitoring:
    """Where the local cluster's Prometheus answers: on the host, and inside the cluster."""

    url: str
    in_cluster_url: str = IN_CLUSTER_URL

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``[]`` when nothing matches)."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(address, timeout=10) as response:
            answer = json.load(response)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, ``None`` when it returns nothing."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        """Prometheus' active targets (labels, health, last error)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=10) as response:
            active: list[dict[str, Any]] = json.load(response)["data"]["activeTargets"]
        return active


# ---------------------------------------------------------------------------------------------
# pure parts


def workdir(inst: netns.Instance) -> Path:
    return inst.state / "monitoring"


def target_file(directory: Path, job: str) -> Path:
    return directory / f"{job}.json"


def prometheus_config(directory: Path) -> dict[str, Any]:
    """One scrape job per target file, both re-read every second.

    The operator's job honours its series' own labels, as the shipped ServiceMonitor does: its
    ``namespace`` is the described object's, not the operator pod's.
    """
    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [
            {"job_name": job, "honor_labels": job == "lepton-operator",
             "file_sd_configs": [{"files": [str(target_file(directory, job))], "refresh_interval": "1s"}]}
            for job in JOBS
        ],
    }  # fmt: skip


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready and bool(status.get("podIP")) and not (pod.get("metadata") or {}).get("deletionTimestamp")


def target_groups(servers: Sequence[Mapping[str, Any]], operators: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The file-based targets of both jobs from the pods listed now (Ready pods only)."""

    def group(pod: Mapping[str, Any], port: int, **labels: str) -> dict[str, Any]:
        meta = pod["metadata"]
        return {"targets": [f"{pod['status']['podIP']}:{port}"],
                "labels": {"namespace": meta["namespace"], "pod": meta["name"], **labels}}  # fmt: skip

    triton = [group(p, TRITON_METRICS_PORT, service=p["metadata"]["labels"]["lepton.ai/inferenceservice"])
              for p in servers if _ready(p)]  # fmt: skip
    operator = [group(p, OPERATOR_METRICS_PORT) for p in operators if _ready(p)]
    key = lambda g: g["labels"]["namespace"] + "/" + g["labels"]["pod"]  # noqa: E731
    return {"triton": sorted(triton, key=key), "lepton-operator": sorted(operator, key=key)}


def service_manifests() -> list[dict[str, Any]]:
    """``monitoring/prometheus-operated``: a Service whose one endpoint is the node's Prometheus."""
    meta = {"name": SERVICE, "namespace": NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"ports": [{"name": "web", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {**meta, "labels": {"kubernetes.io/service-name": SERVICE}},
         "addressType": "IPv4", "ports": [{"name": "web", "port": PORT, "protocol": "TCP"}],
         "endpoints": [{"addresses": [nodeconfig.NODE_IP], "conditions": {"ready": True}}]},
    ]  # fmt: skip


def write_targets(directory: Path, groups: Mapping[str, list[dict[str, Any]]]) -> bool:
    """Replace each job's target file atomically when it changed; ``True`` if any did."""
    changed = False
    for job, entries in groups.items():
        path, text = target_file(directory, job), json.dumps(entries, indent=1)
        if not path.exists() or path.read_text() != text:
            staging = path.with_suffix(".tmp")
            staging.write_text(text)
            staging.replace(path)
            changed = True
    return changed


# ---------------------------------------------------------------------------------------------
# processes


def _state_file(directory: Path) -> Path:
    return directory / "state.json"


def _alive(inst: netns.Instance) -> bool:
    for name in PROCESSES:
        try:
            if not pid_alive(int(realnode.pid_file(inst, name).read_text())):
                return False
        except (OSError, ValueError):
            return False
    return True


def stop(inst: netns.Instance) -> None:
    """Stop the three processes (the cluster's teardown would sweep them anyway)."""
    for name in PROCESSES:
        realnode.stop_process(inst, name)


def ensure(cluster: Cluster, kubectl: Kubectl, timeout: float = 90.0) -> Monitoring:
    """Prometheus, its targets and the ``prometheus-operated`` Service, started unless running."""
    if cluster.mode != MODE_LOCAL:
        raise ClusterError(
            f"the built-in Prometheus needs the local cluster (this is {cluster.mode!r}): install one "
            f"(e.g. the Prometheus Operator) that scrapes InferenceService pods with the labels namespace, "
            f"service and pod, reachable in the cluster as {IN_CLUSTER_URL}"
        )
    binary = shutil.which("prometheus")
    if binary is None:
        raise ClusterError("prometheus is not installed: run `make tools` (apt-get install prometheus)")
    inst = netns.instance()
    directory = workdir(inst)
    kubectl.apply(service_manifests(), "--server-side", "--force-conflicts")
    state, config = _state_file(directory), directory / "prometheus.yml"
    wanted = json.dumps(prometheus_config(directory))  # JSON is YAML
    if _alive(inst) and state.exists() and config.exists() and config.read_text() == wanted:
        found = Monitoring(json.loads(state.read_text())["url"])
        if http_ok(found.url + "/-/ready"):
            return found
    stop(inst)
    directory.mkdir(parents=True, exist_ok=True)
    write_targets(directory, {job: [] for job in JOBS})
    config.write_text(wanted)
    realnode.spawn(inst, "prometheus", [
        *inst.network_argv(), binary, f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}", "--storage.tsdb.retention.time=1d",
        f"--web.listen-address=0.0.0.0:{PORT}",
    ])  # fmt: skip
    realnode.spawn(inst, "prometheus-targets", [
        *inst.network_argv(), sys.executable, "-m", "localcluster.monitoring", "sync",
        "--kubeconfig", str(cluster.kubeconfig), "--dir", str(directory),
    ], env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    port = free_port()
    realnode.start_forwarder(inst, port, (nodeconfig.NODE_IP, PORT), name="prometheus-forwarder")
    found = Monitoring(f"http://127.0.0.1:{port}")
    wait_until(lambda: http_ok(found.url + "/-/ready"), timeout, "Prometheus ready")
    state.write_text(json.dumps({"url": found.url}))
    return found


# ---------------------------------------------------------------------------------------------
# the target syncer


def sync(kubeconfig: Path, directory: Path, interval: float = SYNC_SECONDS) -> None:
    """Rewrite the target files from the cluster's pods every ``interval`` seconds, forever.

    Lists through the Python client (one process, plain HTTP), not kubectl: two kubectl starts
    a second would cost a few per cent of a 2-core machine.
    """
    import kubernetes  # noqa: PLC0415 - only the syncer process needs the client

    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(str(kubeconfig)))  # type: ignore[no-untyped-call]

    def pods(selector: str) -> list[dict[str, Any]]:
        response: Any = api.list_pod_for_all_namespaces(label_selector=selector, _preload_content=False, _request_timeout=10)
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    while True:
        try:
            servers, operators = pods(SERVER_SELECTOR), pods(OPERATOR_SELECTOR)
            if write_targets(directory, target_groups(servers, operators)):
                print(f"{time.strftime('%H:%M:%S')} targets: {sum(1 for p in servers if _ready(p))} triton, "
                      f"{sum(1 for p in operators if _ready(p))} operator", flush=True)  # fmt: skip
        except Exception as error:  # noqa: BLE001 - a failed list is retried; the files stay as they were
            print(f"cannot list pods: {type(error).__name__}: {error}", flush=True)
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.monitoring", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("sync", help="keep the file-based targets in step with the cluster's pods")
    run.add_argument("--kubeconfig", type=Path, required=True)
    run.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    sync(args.kubeconfig, args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
