"""The controllers' API access (server-side apply, label lists, status patches) on a real API server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import localcluster
from lepton_operator.api.meta import TRAINING_JOB
from lepton_operator.controllers import kube
from lepton_operator.render import common
from localcluster.kube import Kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("lepton_crds")]


@pytest.fixture(scope="module", autouse=True)
def kubeconfig(cluster: localcluster.Cluster) -> Iterator[None]:
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    yield
    if previous is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = previous


def config_map(namespace: str, name: str, data: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": common.child_labels("TrainingJob", "job", "test")},
        "data": data,
    }


def test_apply_creates_then_updates_and_lists_by_label(namespace: str, kubectl: Kubectl) -> None:
    kube.apply(config_map(namespace, "one", {"a": "1"}))
    kube.apply(config_map(namespace, "one", {"a": "2"}))  # idempotent create-or-update
    kube.apply(config_map(namespace, "two", {"b": "1"}))
    assert kubectl.get("configmap", "one")["data"] == {"a": "2"}
    managed = kubectl.json("get", "configmap", "one", "--show-managed-fields")["metadata"]["managedFields"]
    assert [entry["manager"] for entry in managed] == [kube.FIELD_MANAGER]
    selector = common.label_selector(common.selector_labels("TrainingJob", "job", "test"))
    names = sorted(item["metadata"]["name"] for item in kube.list_labelled("v1", "ConfigMap", namespace, selector))
    assert names == ["one", "two"]
    assert kube.get("v1", "ConfigMap", namespace, "missing") is None
    assert kube.delete("v1", "ConfigMap", namespace, "two") is True
    assert kube.delete("v1", "ConfigMap", namespace, "two") is False


def test_apply_carries_characters_outside_the_bmp(namespace: str, kubectl: Kubectl) -> None:
    """An apply is YAML to the API server, whose parser refused JSON's surrogate-pair escapes (issue #19's fuzzing)."""
    text = "emoji 😀, right-to-left \u202e, CJK 名前, controls \x85\x9f\x7f\x00\t\n, separators \u2028\u2029"
    kube.apply(config_map(namespace, "unicode", {"text": text}))
    assert kubectl.get("configmap", "unicode")["data"] == {"text": text}
    assert "😀".encode() in kube.apply_body(config_map(namespace, "unicode", {"text": text}))  # UTF-8, not escaped


def test_patch_status_writes_the_status_subresource(namespace: str, kubectl: Kubectl) -> None:
    kubectl.apply({"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "job"},
                   "spec": {"image": "t:1"}}, "--server-side")  # fmt: skip
    kube.patch_status(TRAINING_JOB, namespace, "job", {"phase": "Pending", "workers": {"desired": 2}})
    status = kubectl.get("tj", "job")["status"]
    assert status["phase"] == "Pending" and status["workers"]["desired"] == 2
    kube.patch_status(TRAINING_JOB, namespace, "gone", {"phase": "Pending"})  # a vanished object is fine


def test_merge_patch_and_events(namespace: str, kubectl: Kubectl) -> None:
    created = kube.apply(config_map(namespace, "patched", {"a": "1"}))
    kube.patch("v1", "ConfigMap", namespace, "patched", {"data": {"b": "2"}}, field_manager="lepton-test")
    assert kubectl.get("configmap", "patched")["data"] == {"a": "1", "b": "2"}
    kube.post_event(created, "Normal", "Tested", "an event from kube.post_event", "lepton-test")
    events = kubectl.json("get", "events", "--field-selector", "involvedObject.name=patched")["items"]
    assert [(e["reason"], e["type"], e["source"]["component"]) for e in events] == [("Tested", "Normal", "lepton-test")]


def test_plain_listing_with_a_field_selector_and_removing_scheduling_gates(namespace: str, kubectl: Kubectl) -> None:
    """What gang admission needs: every unfinished pod as plain JSON, and a gate lifted by the API server's rules."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gated", "namespace": namespace},
           "spec": {"schedulingGates": [{"name": "lepton.ai/gang"}], "nodeSelector": {"lepton.ai/test": "no-such-node"},
                    "containers": [{"name": "c", "image": "localhost/nothing:1"}]}}  # fmt: skip
    assert kube.create(pod)
    listed = [p for p in kube.list_plain("v1", "Pod", "status.phase!=Succeeded,status.phase!=Failed")
              if p["metadata"]["namespace"] == namespace]  # fmt: skip
    assert [p["metadata"]["name"] for p in listed] == ["gated"] and isinstance(listed[0]["spec"], dict)
    assert listed[0]["spec"]["schedulingGates"] == [{"name": "lepton.ai/gang"}]
    everywhere = kubectl.in_namespace(None).get("nodes")
    assert len(everywhere) > 2  # so that pages of 2 take several requests
    assert sorted(n["metadata"]["name"] for n in kube.list_plain("v1", "Node", page=2)) == sorted(
        n["metadata"]["name"] for n in everywhere
    )
    assert kube.remove_scheduling_gates(namespace, "gated")
    assert "schedulingGates" not in kubectl.get("pod", "gated")["spec"]
    assert not kube.remove_scheduling_gates(namespace, "gone")


def test_requests_reuse_their_connections_even_from_many_threads(namespace: str, kubectl: Kubectl) -> None:
    """Every call reads its response (which hands the connection back) and the pool keeps them all.

    An unread raw response kept its connection, so each create opened a new one with a
    TLS handshake; a pool smaller than the operator's threads closed connections it had
    no room for. Both cost the operator and the API server CPU at scale.
    """
    client = kube.api_client()
    pool = client.rest_client.pool_manager.connection_from_url(client.configuration.host)
    kube.get("v1", "ConfigMap", namespace, "warm-up")  # at least one connection exists
    opened = pool.num_connections
    for index in range(10):
        assert kube.create(config_map(namespace, f"seq-{index}", {"i": str(index)}))
        assert not kube.create(config_map(namespace, f"seq-{index}", {"i": str(index)}))  # a conflict, read too
        kube.patch("v1", "ConfigMap", namespace, f"seq-{index}", {"data": {"j": "1"}})
        assert kube.delete("v1", "ConfigMap", namespace, f"seq-{index}")
    assert pool.num_connections == opened  # one after another: always the same connection

    threads = 24  # more than the client's default pool (5 per core) on a small machine
    with ThreadPoolExecutor(max_workers=threads) as workers:
        for _ in range(3):  # waves of concurrent requests: the second and third find the first's connections
            created = list(workers.map(kube.create, [config_map(namespace, f"par-{i}-{uuid.uuid4().hex[:6]}", {})
                                                     for i in range(threads)]))  # fmt: skip
            assert all(created)
    assert pool.num_connections - opened <= threads, pool.num_connections - opened
