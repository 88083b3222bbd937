"""The TrainingJob reconciler against a fake API: what it writes, in which order, and what it reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import kopf
import pytest

from lepton_operator import metrics
from lepton_operator.controllers import admission, kube, network
from lepton_operator.api.training import TrainingJobSpec
from lepton_operator.controllers import training as controller
from lepton_operator.controllers.progress import ProgressPoller
from fake_kube import cpu_node
from lepton_operator.controllers.wakeups import ObjectKey, Wakeups
from lepton_operator.render import training as render
from lepton_operator.status import capacity
from lepton_workloads import progress_server

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LOGGER = logging.getLogger("test")


@pytest.fixture(autouse=True)
def fresh_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh operator would: no policy synced yet."""
    monkeypatch.setattr(network, "POLICIES", network.PolicySync())


class FakeApi:
    """Records every write; serves pods and datasets from dicts."""

    def __init__(self, pods: list[dict[str, Any]] | None = None) -> None:
        self.pods = pods or []
        self.datasets: dict[str, dict[str, Any]] = {}
        self.service_accounts: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.policies: list[tuple[str, str, int]] = []
        """NetworkPolicy writes, kept apart from ``calls``: (verb, object, how many other writes came before)."""
        self.applied_policies: list[dict[str, Any]] = []
        self.job: dict[str, Any] | None = None
        self.nodes = [cpu_node("n", 64)]
        self.others: list[dict[str, Any]] = []
        """Pods of other jobs, as the admission's cluster-wide listing sees them."""

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(controller, "ADMISSION", admission.GangAdmission(lambda: (self.nodes, self.pods + self.others)))
        monkeypatch.setattr(kube, "remove_scheduling_gates", self.remove_scheduling_gates)
        monkeypatch.setattr(kube, "as_admitted", self.as_admitted)
        monkeypatch.setattr(kube, "list_labelled", self.list_labelled)
        monkeypatch.setattr(kube, "apply", self.apply)
        monkeypatch.setattr(kube, "create", self.create)
        monkeypatch.setattr(kube, "delete", self.delete)
        monkeypatch.setattr(kube, "get", self.get)
        monkeypatch.setattr(kube, "patch_status", self.patch_status)

    def list_labelled(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        assert (kind, selector) == ("Pod", "lepton.ai/role=worker,lepton.ai/trainingjob=job")
        return self.pods

    def as_admitted(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """What the namespace's admission adds: here, a LimitRange's default cpu request."""
        containers = [{**c, "resources": {"requests": {"cpu": "1"}, **c.get("resources", {})}} for c in manifest["spec"]["containers"]]
        return {**manifest, "spec": {**manifest["spec"], "containers": containers}}

    def remove_scheduling_gates(self, namespace: str, name: str) -> bool:
        self.calls.append(("ungate", f"Pod/{name}"))
        return True

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "NetworkPolicy":
            self.policies.append(("apply", manifest["metadata"]["name"], len(self.calls)))
            self.applied_policies.append(dict(manifest))
            return dict(manifest)
        self.calls.append(("apply", f"{manifest['kind']}/{manifest['metadata']['name']}"))
        return dict(manifest)

    def create(self, manifest: Mapping[str, Any]) -> bool:
        gated = " (gated)" if manifest.get("spec", {}).get("schedulingGates") else ""
        self.calls.append(("create", f"{manifest['kind']}/{manifest['metadata']['name']}{gated}"))
        return True

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, propagation: str = "",
               grace_period_seconds: int | None = None) -> bool:  # fmt: skip
        if kind == "NetworkPolicy":
            self.policies.append(("delete", name, len(self.calls)))
            return True
        self.calls.append(("delete", f"{kind}/{name}" + ("!" if grace_period_seconds == 0 else "")))
        return True

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        if kind == "TrainingJob":
            return self.job
        if kind == "ServiceAccount":
            return {"metadata": {"name": name}} if name in self.service_accounts else None
        return self.datasets.get(name)

    def patch_status(self, info: Any, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.calls.append(("status", f"{status.get('phase')}/{status.get('group')}"))


def body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "job", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {"image": "trainer:1", **spec},
        "status": status or {},
    }


def run(api: FakeApi, monkeypatch: pytest.MonkeyPatch, obj: dict[str, Any]) -> tuple[float | None, dict[str, Any], list[tuple[str, str, str]]]:
    api.install(monkeypatch)
    api.job = obj
    patch: dict[str, Any] = {}
    events: list[tuple[str, str, str]] = []
    due = controller.reconcile_job(obj, patch, retry=0, logger=LOGGER, warn=lambda r, m: None,
                                   post=lambda *e: events.append(e), now=NOW)  # fmt: skip
    return due, patch, events


def test_new_job_gets_claim_service_and_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    due, patch, events = run(api, monkeypatch, body({"workers": {"replicas": 2}, "checkpoint": {"size": "1Gi"}}))
    assert api.calls[:2] == [
        ("apply", "PersistentVolumeClaim/job-checkpoint"),
        ("apply", "Service/job"),
    ]
    assert api.policies == [("apply", "job-training", 0)]  # isolated before anything else is written
    assert sorted(api.calls[2:]) == [("create", "Pod/job-worker-0-g0"), ("create", "Pod/job-worker-1-g0")]
    assert patch["phase"] == "Starting" and due is None
    assert events == [("Normal", "Starting", "creating 2 workers (group 0)")]
    assert metrics.REGISTRY.get_sample_value("lepton_training_workers", {"state": "desired"}) is not None


def test_a_group_that_does_not_fit_whole_waits_gated_and_goes_to_the_scheduler_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 2-worker jobs on a node with room for 3 workers: the second waits whole, never half-bound.

    The job asks for no cpu; the namespace's admission gives each worker 1 (``FakeApi.as_admitted``).
    """
    spec = {"workers": {"replicas": 2}}
    api = FakeApi()
    api.nodes = [cpu_node("n", 3)]
    api.others = [{"metadata": {"name": f"other-{i}", "namespace": "ml"}, "spec": {"nodeName": "n", "containers": [
        {"resources": {"requests": {"cpu": "1"}}}]}, "status": {"phase": "Running"}} for i in range(2)]  # fmt: skip
    due, patch, events = run(api, monkeypatch, body(spec))
    assert sorted(api.calls[1:]) == [("create", "Pod/job-worker-0-g0 (gated)"), ("create", "Pod/job-worker-1-g0 (gated)")]
    message = "waiting for room for the whole group: 2 workers of cpu 1 each, 1 fit now"
    assert (patch["phase"], patch["reason"]) == ("Pending", "WaitingForCapacity") and due == admission.RECHECK_SECONDS
    scheduled = next(c for c in patch["conditions"] if c["type"] == "WorkersScheduled")
    assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == ("False", "WaitingForCapacity", message)
    assert events == [("Warning", "Pending", message)]
    assert controller.ADMISSION.waiting() == [("TrainingJob", "ml", "job")]
    # The gated pods exist now; the other job's pods finish and the next pass lets the whole group go.
    api.pods = [render.gated(p) for p in render.worker_group("job", "ml", "uid-1", TrainingJobSpec.model_validate(body(spec)["spec"]), 2, 0)]
    assert controller.groups_waiting_for({**api.others[0], "status": {"phase": "Succeeded"}}) == [("TrainingJob", "ml", "job")]
    api.others, api.calls = [], []
    controller.ADMISSION = admission.GangAdmission(lambda: (api.nodes, api.pods))
    api.job = body(spec, {**patch})
    controller.reconcile_job(api.job, {}, retry=0, logger=LOGGER, warn=lambda r, m: None, post=lambda *e: None, now=NOW)
    assert sorted(api.calls) == [("ungate", "Pod/job-worker-0-g0"), ("ungate", "Pod/job-worker-1-g0")]
    assert controller.ADMISSION.waiting() == []


def failed_pod(index: int, code: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"job-worker-{index}-g0", "labels": {"lepton.ai/worker-index": str(index), "lepton.ai/group": "0"}},
        "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": code}}}]},
    }


def test_a_restart_is_recorded_before_the_old_group_is_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi([failed_pod(0, 143)])
    before = metrics.REGISTRY.get_sample_value("lepton_training_restarts_total", {"reason": "RetryableExitCode"}) or 0
    due, patch, events = run(api, monkeypatch, body({"restartPolicy": {"backoff": {"initialSeconds": 5}}}, {"phase": "Running"}))
    assert api.calls == [("status", "Restarting/1"), ("delete", "Pod/job-worker-0-g0")]
    assert due == 5 and patch["restarts"]["total"] == 1
    assert [e[:2] for e in events] == [("Warning", "Restarting")]
    after = metrics.REGISTRY.get_sample_value("lepton_training_restarts_total", {"reason": "RetryableExitCode"})
    assert after == before + 1


def test_a_restart_whose_status_write_timed_out_but_landed_is_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def restarts() -> float:
        return metrics.REGISTRY.get_sample_value("lepton_training_restarts_total", {"reason": "RetryableExitCode"}) or 0

    api = FakeApi([failed_pod(0, 143)])
    landed: list[Mapping[str, Any]] = []

    def slow_patch(info: Any, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        landed.append(status)  # the server applies it; the client gives up waiting
        raise TimeoutError("read timed out")

    api.install(monkeypatch)
    monkeypatch.setattr(kube, "patch_status", slow_patch)
    before = restarts()
    api.job = body({}, {"phase": "Running"})
    with pytest.raises(kopf.TemporaryError):
        controller.reconcile_job(api.job, {}, retry=0, logger=LOGGER, warn=lambda r, m: None, post=lambda *e: None, now=NOW)
    assert restarts() == before  # not known to have happened yet
    api.pods = []  # the next pass reads the restart back from the server
    for _ in range(2):
        api.job = body({}, dict(landed[0]))
        controller.reconcile_job(api.job, {}, retry=0, logger=LOGGER, warn=lambda r, m: None, post=lambda *e: None, now=NOW)
        assert restarts() == before + 1


def test_job_waits_for_its_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    _, patch, _ = run(api, monkeypatch, body({"dataset": {"name": "images"}}))
    assert patch["reason"] == "DatasetNotReady" and api.calls == []
    assert "does not exist" in next(c for c in patch["conditions"] if c["type"] == "Ready")["message"]
    api.datasets["images"] = {"status": {"phase": "Ready"}}
    _, patch, _ = run(api, monkeypatch, body({"dataset": {"name": "images"}}))
    assert patch["phase"] == "Starting"
    assert controller.DATASET_USERS.jobs_of({"metadata": {"namespace": "ml", "name": "images"}}) == [
        ("TrainingJob", "ml", "job")
    ]


def test_job_waits_for_its_service_account_instead_of_retrying_refused_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    due, patch, _ = run(api, monkeypatch, body({"serviceAccountName": "trainer"}))
    assert patch["reason"] == "ServiceAccountNotFound" and not [c for c in api.calls if c[0] == "create"]
    assert due is not None and due <= 10  # nothing wakes it when the account appears: it looks again
    api.service_accounts.add("trainer")
    _, patch, _ = run(api, monkeypatch, body({"serviceAccountName": "trainer"}))
    assert patch["phase"] == "Starting" and ("create", "Pod/job-worker-0-g0") in api.calls


def test_invalid_spec_is_reported_and_nothing_is_created(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    _, patch, _ = run(api, monkeypatch, body({"workers": {"replicas": 0}}))
    assert patch["phase"] == "Failed" and api.calls == []


def test_an_api_failure_becomes_a_retry_with_a_condition(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    api.install(monkeypatch)

    def broken(*_: Any) -> list[dict[str, Any]]:
        raise RuntimeError("apiserver away")

    monkeypatch.setattr(kube, "list_labelled", broken)
    api.job = body({})
    patch: dict[str, Any] = {}
    with pytest.raises(kopf.TemporaryError):
        controller.reconcile_job(body({}), patch, retry=1, logger=LOGGER, warn=lambda r, m: None, post=lambda *e: None, now=NOW)
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ReconcileError" and "apiserver away" in ready["message"]


def test_ttl_deletes_a_finished_job(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    status = {"phase": "Succeeded", "completionTime": "2026-01-02T03:00:00Z", "group": 0}
    due, _, _ = run(api, monkeypatch, body({"runPolicy": {"ttlSecondsAfterFinished": 10}}, status))
    assert api.calls == [("delete", "TrainingJob/job")] and due is None


def test_node_watch_reports_deleted_and_long_not_ready_nodes_and_wakes_their_jobs() -> None:
    nodes = controller.NodeWatch()
    key = controller.ObjectKey("TrainingJob", "ml", "job")
    pods = [{"spec": {"nodeName": "a"}}, {"spec": {"nodeName": "b"}}, {"spec": {}}]
    nodes.note_pods(key, pods)
    not_ready = {"metadata": {"name": "b"},
                 "status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-01-02T03:04:00Z"}]}}  # fmt: skip
    assert nodes.observe(not_ready, False, NOW) == [key]
    assert nodes.lost(pods, 60, NOW) == ({}, 55)
    assert nodes.observe({"metadata": {"name": "a"}}, True, NOW) == [key]
    lost, recheck = nodes.lost(pods, 60, NOW + timedelta(seconds=60))
    assert lost == {"a": "was deleted", "b": "has been NotReady for 65 s"} and recheck is None
    ready = {"metadata": {"name": "b"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    nodes.observe(ready, False, NOW)
    assert nodes.lost(pods, 60, NOW + timedelta(seconds=60))[0] == {"a": "was deleted"}
    nodes.note_pods(key, [])
    assert nodes.observe(ready, False, NOW) == []


def test_a_node_joining_wakes_the_groups_waiting_for_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only after the waiting group's next periodic look: its status says at once how many fit now."""
    waiting = controller.ObjectKey("TrainingJob", "ml", "waits")
    gangs = admission.GangAdmission(lambda: ([], []))
    assert gangs.admit(waiting, capacity.Demand.of({"spec": {}}), 1, own={}) is not None  # no node at all: it waits
    monkeypatch.setattr(controller, "ADMISSION", gangs)
    nodes = controller.NodeWatch()
    ready = {"metadata": {"name": "new"}, "status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"cpu": "4"}}}
    assert nodes.observe(ready, False, NOW) == [waiting]
    assert nodes.observe(ready, False, NOW) == []  # the same node again: nothing changed


def test_pods_on_a_deleted_node_are_force_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    running = {"metadata": {"name": "job-worker-0-g0", "labels": {"lepton.ai/worker-index": "0", "lepton.ai/group": "0"}},
               "spec": {"nodeName": "gone"}, "status": {"phase": "Running"}}  # fmt: skip
    api = FakeApi([running])
    monkeypatch.setattr(controller, "NODES", controller.NodeWatch())
    controller.NODES.observe({"metadata": {"name": "gone"}}, True, NOW)
    due, patch, _ = run(api, monkeypatch, body({"restartPolicy": {"backoff": {"initialSeconds": 0}}}, {"phase": "Running", "group": 0}))
    assert api.calls == [("status", "Restarting/1"), ("delete", "Pod/job-worker-0-g0!")]
    assert patch["restarts"]["byReason"] == {"NodeLost": 1}


def test_worker_zeros_live_progress_reaches_status_and_metrics_and_survives_a_failed_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = progress_server.start(0, host="127.0.0.1")
    assert server is not None
    poller = ProgressPoller(Wakeups(), interval=0)
    monkeypatch.setattr(controller, "PROGRESS", poller)
    spec = TrainingJobSpec.model_validate({"image": "trainer:1", "workers": {"replicas": 2}})
    pods = render.worker_group("job", "ml", "uid-1", spec, 2, 0)
    for index, pod in enumerate(pods):
        pod["metadata"]["uid"] = f"pod-{index}"
        pod["spec"]["nodeName"] = "n1"
        pod["status"] = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    pods[0]["spec"]["containers"][0]["ports"][1]["containerPort"] = server.port  # worker 0's endpoint, here
    api = FakeApi(pods)
    status: dict[str, Any] = {"phase": "Running", "group": 0, "workers": {"desired": 2}}
    try:
        _, patch, _ = run(api, monkeypatch, body({"workers": {"replicas": 2}}, status))
        assert patch["phase"] == "Running" and "progress" not in patch  # nothing reported yet
        server.publish({"schema": "lepton.ai/training-progress/v1", "step": 5, "epoch": 0, "loss": 2.0})
        assert asyncio.run(poll(poller)) == [("TrainingJob", "ml", "job")]
        status = {**status, **patch}
        _, patch, _ = run(api, monkeypatch, body({"workers": {"replicas": 2}}, status))
        assert patch["progress"] == {"step": 5, "epoch": 0, "loss": 2.0, "updateTime": "2026-01-02T03:04:05Z"}
        assert metrics.REGISTRY.get_sample_value("lepton_training_progress_step", {"namespace": "ml", "name": "job"}) == 5
    finally:
        server.close()
    assert asyncio.run(poll(poller)) == []  # the endpoint is gone: unknown
    status = {**status, **patch}
    _, patch, _ = run(api, monkeypatch, body({"workers": {"replicas": 2}}, status))
    assert patch == {} and status["progress"]["step"] == 5  # nothing to write: the progress shown stays


async def poll(poller: ProgressPoller) -> list[ObjectKey]:
    async with aiohttp.ClientSession() as session:
        return await poller.poll(session)


def test_the_workers_policy_is_written_once_per_generation_deleted_when_disabled_and_again_after_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi()

    def pass_over(generation: int, uid: str = "uid-1", **network_policy: Any) -> list[tuple[str, str]]:
        job = body({"networkPolicy": network_policy}, {"phase": "Running", "group": 0, "observedGeneration": 1})
        job["metadata"].update(generation=generation, uid=uid)
        api.policies = []
        run(api, monkeypatch, job)
        return [(verb, name) for verb, name, _ in api.policies]

    assert pass_over(1) == [("apply", "job-training")]
    assert pass_over(1) == []  # a steady pass writes no policy
    assert pass_over(2, enabled=False) == [("delete", "job-training")]
    assert pass_over(2, enabled=False) == []
    widened = {"allowFrom": [{"podSelector": {"matchLabels": {"app": "debugger"}}}]}
    assert pass_over(3, **widened) == [("apply", "job-training")]  # enabled again, and widened
    assert {"podSelector": {"matchLabels": {"app": "debugger"}}} in api.applied_policies[-1]["spec"]["ingress"][0]["from"]
    controller.stopped(ObjectKey("TrainingJob", "ml", "job"))  # this replica paused, or the loop ended
    assert pass_over(3, **widened) == [("apply", "job-training")]  # a replica that acts again writes it once more
    assert pass_over(3, "uid-2", **widened) == [("apply", "job-training")]  # same name and generation, another object
