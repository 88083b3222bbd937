"""The local cluster's Prometheus, its pure parts: scrape config, targets from pods, the Service (no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from localcluster import monitoring, nodeconfig
from localcluster.lepton import REPO


def pod(name: str, namespace: str, ip: str | None, ready: bool = True, deleting: bool = False,
        service: str | None = None, role: str = "server") -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {}}
    if service:
        meta["labels"] = {"lepton.ai/inferenceservice": service, "lepton.ai/role": role}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def test_targets_are_the_ready_replicas_with_the_labels_a_servicemonitor_gives() -> None:
    servers = [pod("serve-a", "team", "10.244.0.7", service="serve"), pod("serve-b", "team", "10.244.0.8", ready=False, service="serve"),
               pod("serve-c", "team", "10.244.0.9", deleting=True, service="serve"), pod("serve-d", "team", None, service="serve")]  # fmt: skip
    operators = [pod("lepton-operator-x", "lepton-system", "10.244.0.4")]
    groups = monitoring.target_groups(servers, operators)
    assert groups["triton"] == [{"targets": ["10.244.0.7:8002"], "labels": {"namespace": "team", "pod": "serve-a", "service": "serve"}}]
    assert groups["lepton-operator"] == [{"targets": ["10.244.0.4:8080"],
                                          "labels": {"namespace": "lepton-system", "pod": "lepton-operator-x"}}]  # fmt: skip


def test_activators_are_scraped_like_the_replicas_of_their_service() -> None:
    """At zero replicas their held-requests gauge is the only demand the autoscaler can see."""
    assert monitoring.SERVER_SELECTOR == "lepton.ai/role in (server,activator),lepton.ai/inferenceservice"
    groups = monitoring.target_groups([pod("serve-activator-x", "team", "10.244.0.5", service="serve", role="activator")], [])
    assert groups["triton"] == [{"targets": ["10.244.0.5:8002"],
                                 "labels": {"namespace": "team", "pod": "serve-activator-x", "service": "serve"}}]  # fmt: skip


def test_target_files_change_only_when_the_targets_do(tmp_path: Path) -> None:
    groups = {"triton": [{"targets": ["10.244.0.7:8002"], "labels": {}}], "lepton-operator": []}
    assert monitoring.write_targets(tmp_path, groups)
    assert not monitoring.write_targets(tmp_path, groups)
    assert monitoring.write_targets(tmp_path, {**groups, "triton": []})


def test_the_operators_series_keep_their_namespace_here_as_under_the_shipped_servicemonitor(tmp_path: Path) -> None:
    jobs = {job["job_name"]: job for job in monitoring.prometheus_config(tmp_path)["scrape_configs"]}
    assert jobs["lepton-operator"]["honor_labels"] and not jobs["triton"]["honor_labels"]
    assert jobs["triton"]["file_sd_configs"][0]["files"] == [str(tmp_path / "triton.json")]
    shipped = yaml.safe_load((REPO / "manifests/components/monitoring/servicemonitor.yaml").read_text())
    assert all(endpoint["honorLabels"] for endpoint in shipped["spec"]["endpoints"])


def test_the_cluster_finds_prometheus_where_the_examples_look_for_it() -> None:
    namespace, service, endpoints = monitoring.service_manifests()
    assert "selector" not in service["spec"] and service["spec"]["ports"][0]["port"] == monitoring.PORT
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == service["metadata"]["name"]
    assert endpoints["endpoints"][0]["addresses"] == [nodeconfig.NODE_IP]
    urls = {doc["spec"]["autoscaling"]["prometheus"]["url"]
            for path in (REPO / "manifests/examples").glob("*.yaml") for doc in yaml.safe_load_all(path.read_text())
            if doc and doc["kind"] == "InferenceService" and doc["spec"].get("autoscaling")}  # fmt: skip
    assert urls == {monitoring.IN_CLUSTER_URL}
