"""InferenceService on a real API server: children rendered, /scale, template stability, TrainingJob and s3 sources.

Pods run on kwok nodes (no Triton process), so "ready" here is the kubelet
stand-in's; the model-level readiness probe is checked in the rendered spec.
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from localcluster.kube import Kubectl, condition, wait_until
from operator_fixtures import RunningOperator

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
SPEC: dict[str, Any] = {
    "model": {
        "name": "resnet",
        "source": {"uri": "https://models.example/resnet/"},  # no claim: kwok schedules it at once
        "maxBatchSize": 8,
        "inputs": [{"name": "INPUT__0", "dims": [4]}],
        "outputs": [{"name": "OUTPUT__0", "dims": [2]}],
    },
    "gpu": {"count": 1},
    "replicas": 2,
}


def service(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": name}, "spec": spec}


def status_for_generation(kubectl: Kubectl, name: str, phase: str | None = None) -> dict[str, Any]:
    def current() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl.get("lis", name)
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        return obj if phase is None or status.get("phase") == phase else None

    found: dict[str, Any] | None = wait_until(current, TIMEOUT, f"lis/{name} status (phase {phase})")
    assert found is not None
    return found


def deployment_with(kubectl: Kubectl, name: str, replicas: int) -> dict[str, Any]:
    def current() -> dict[str, Any] | None:
        found = kubectl.get_or_none("deployment", name)
        return found if found and found["spec"]["replicas"] == replicas else None

    deployment: dict[str, Any] | None = wait_until(current, TIMEOUT, f"deployment/{name} with {replicas} replicas")
    assert deployment is not None
    return deployment


def test_operator_inference_renders_children_and_reports_ready(
    lepton_operator: RunningOperator, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.apply(service("serve", SPEC), "--server-side")
    deployment = deployment_with(kubectl, "serve", 2)
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/models/resnet/ready"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["initContainers"][0]["name"] == "stage-model"
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"
    # The operator applies the Service right after the Deployment: wait for it, do not race it.
    service_obj = wait_until(lambda: kubectl.get_or_none("service", "serve"), TIMEOUT, "service/serve")
    ports = {p["name"]: p["port"] for p in service_obj["spec"]["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert "max_batch_size: 8" in kubectl.get("configmap", "serve-model-config")["data"]["config.pbtxt"]

    obj = status_for_generation(kubectl, "serve", "Ready")
    status = obj["status"]
    assert (status["replicas"], status["readyReplicas"], status["desiredReplicas"]) == (2, 2, 2)
    assert status["url"] == f"http://serve.{namespace}.svc:8000/v2/models/resnet"
    assert condition(obj, "Ready")["status"] == "True"  # type: ignore[index]
    # What Flux and scripts use: kstatus conditions make `kubectl wait` work as is.
    assert "condition met" in kubectl("wait", "--for=condition=Ready", "lis/serve", "--timeout=30s")
    pods = kubectl.get("pods", None, "-l", status["selector"])
    assert len(pods) == 2


def test_operator_inference_kubectl_scale_and_autoscaling_edits_keep_the_template(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    kubectl.apply(service("scaled", SPEC), "--server-side")
    before = deployment_with(kubectl, "scaled", 2)
    status_for_generation(kubectl, "scaled", "Ready")

    kubectl("scale", "lis/scaled", "--replicas=3")  # the /scale subresource writes spec.replicas
    deployment_with(kubectl, "scaled", 3)
    obj = status_for_generation(kubectl, "scaled", "Ready")
    assert obj["status"]["replicas"] == 3

    replica_sets = {rs["metadata"]["name"] for rs in kubectl.get("replicasets")}
    patch = {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "target": 5}}}
    kubectl("patch", "lis", "scaled", "--type=merge", "-p", json.dumps(patch))
    status_for_generation(kubectl, "scaled")
    patch["spec"]["autoscaling"]["target"] = 9
    kubectl("patch", "lis", "scaled", "--type=merge", "-p", json.dumps(patch))
    status_for_generation(kubectl, "scaled")
    after = kubectl.get("deployment", "scaled")
    assert after["spec"]["template"] == before["spec"]["template"]
    assert after["spec"]["replicas"] == 3  # the autoscaler's count is kept, within bounds
    assert {rs["metadata"]["name"] for rs in kubectl.get("replicasets")} == replica_sets


def test_operator_inference_waits_for_its_training_job(lepton_operator: RunningOperator, kubectl: Kubectl) -> None:
    kubectl.apply(
        {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "train"},
         "spec": {"image": "trainer:1"}}, "--server-side",
    )  # fmt: skip
    wait_until(lambda: (kubectl.get("tj", "train").get("status") or {}).get("observedGeneration"), TIMEOUT,
               "the TrainingJob's first status")  # fmt: skip
    spec = {**SPEC, "model": {**SPEC["model"], "source": {"trainingJobRef": {"name": "train"}}}}
    kubectl.apply(service("from-job", spec), "--server-side")
    obj = status_for_generation(kubectl, "from-job", "Pending")
    model = condition(obj, "ModelAvailable")
    assert model is not None and (model["status"], model["reason"]) == ("False", "WaitingForTrainingJob")
    assert kubectl.get_or_none("deployment", "from-job") is None

    done = {"status": {"phase": "Succeeded", "output": {"uri": "pvc://checkpoints/export/model"}}}
    kubectl("patch", "tj", "train", "--subresource=status", "--type=merge", "-p", json.dumps(done))
    deployment = deployment_with(kubectl, "from-job", 2)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-source"]["persistentVolumeClaim"]["claimName"] == "checkpoints"
    mount = next(m for m in deployment["spec"]["template"]["spec"]["initContainers"][0]["volumeMounts"]
                 if m["name"] == "model-source")  # fmt: skip
    assert mount["subPath"] == "export/model"
    obj = status_for_generation(kubectl, "from-job", "Progressing")  # the claim does not exist here
    assert condition(obj, "ModelAvailable")["status"] == "True"  # type: ignore[index]


def test_operator_inference_s3_source_waits_for_its_secret_and_passes_it_by_reference(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    keys = {"accessKeyId": "id", "secretAccessKey": "secret"}
    source = {"uri": "s3://models/exports/", "endpoint": "http://minio.storage:9000",
              "region": "eu-west-1", "secretRef": {"name": "model-keys", "keys": keys}}  # fmt: skip
    kubectl.apply(service("from-s3", {**SPEC, "model": {**SPEC["model"], "source": source}}), "--server-side")

    def model_reason(reason: str) -> dict[str, Any]:
        model: dict[str, Any] = condition(status_for_generation(kubectl, "from-s3"), "ModelAvailable") or {}
        return model if model.get("reason") == reason else {}

    missing = wait_until(lambda: model_reason("SecretNotFound"), TIMEOUT, "ModelAvailable=False SecretNotFound")
    assert missing["status"] == "False" and "model-keys" in missing["message"]
    assert kubectl.get("lis", "from-s3")["status"]["phase"] == "Pending"
    assert kubectl.get_or_none("deployment", "from-s3") is None

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "model-keys"},
              "stringData": {"id": "AKIA-do-not-copy"}}  # fmt: skip
    kubectl.apply(secret)
    half = wait_until(lambda: model_reason("SecretKeyMissing"), TIMEOUT, "ModelAvailable=False SecretKeyMissing")
    assert half["message"] == "Secret model-keys has no key secret"
    kubectl.apply({**secret, "stringData": {"id": "AKIA-do-not-copy", "secret": "sk-do-not-copy"}})

    deployment = deployment_with(kubectl, "from-s3", 2)
    [stager] = deployment["spec"]["template"]["spec"]["initContainers"]
    assert "--source=s3://models/exports/" in stager["args"]
    assert stager["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {item["name"]: item for item in stager["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "model-keys", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "model-keys", "key": "secret"}}
    assert (env["LEPTON_S3_ENDPOINT"]["value"], env["AWS_REGION"]["value"]) == ("http://minio.storage:9000", "eu-west-1")
    assert wait_until(lambda: model_reason("SourceResolved"), TIMEOUT, "ModelAvailable=True")["status"] == "True"

    def warned() -> set[str]:
        events = kubectl.get("events", None, "--field-selector=involvedObject.name=from-s3,type=Warning")
        return {event["reason"] for event in events} >= {"SecretNotFound", "SecretKeyMissing"}

    wait_until(warned, TIMEOUT, "Warning events SecretNotFound and SecretKeyMissing on lis/from-s3")
    # The credentials are passed by reference only: no object the operator writes, no event, no log line holds them.
    written = json.dumps(kubectl.get("all,configmaps,events,inferenceservices"))
    assert "model-keys" in written and "AKIA-do-not-copy" not in written and "sk-do-not-copy" not in written
    log = lepton_operator.log_path.read_text()
    assert "spec of generation 1 accepted" in log
    assert "AKIA-do-not-copy" not in log and "sk-do-not-copy" not in log


def test_operator_inference_bad_model_config_is_stalled(lepton_operator: RunningOperator, kubectl: Kubectl) -> None:
    model = {**SPEC["model"], "dynamicBatching": {"preferredBatchSizes": [16]}}  # above maxBatchSize 8
    kubectl.apply(service("bad", {**SPEC, "model": model}), "--server-side")
    obj = status_for_generation(kubectl, "bad", "Failed")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and (stalled["status"], stalled["reason"]) == ("True", "InvalidModelConfig")
    assert "preferred batch sizes" in stalled["message"]
    assert kubectl.get_or_none("deployment", "bad") is None


class FakePrometheus(http.server.BaseHTTPRequestHandler):
    """Answers instant queries by the start of the PromQL (the operator runs on this machine)."""

    answers: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        promql = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).get("query", [""])[0]
        value = next((v for prefix, v in self.answers.items() if promql.startswith(prefix)), None)
        result = [] if value is None else [{"metric": {}, "value": [0, value]}]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    FakePrometheus.answers = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_operator_inference_autoscaler_follows_the_signal(
    lepton_operator: RunningOperator, kubectl: Kubectl, prometheus: str
) -> None:
    autoscaling = {"minReplicas": 1, "maxReplicas": 4, "target": 2, "signal": "pendingRequests",
                   "scaleDownStabilizationSeconds": 0, "prometheus": {"url": prometheus}}  # fmt: skip
    kubectl.apply(service("auto", {**SPEC, "autoscaling": autoscaling}), "--server-side")
    template = deployment_with(kubectl, "auto", 1)["spec"]["template"]
    status_for_generation(kubectl, "auto", "Ready")

    FakePrometheus.answers = {"sum(nv_inference_pending_request_count": "8", "sum(increase(": "20"}
    deployment_with(kubectl, "auto", 4)  # 8 pending on 1 replica, target 2 per replica

    def scaled_up() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = kubectl.get("events", None, "--field-selector",
                                                   "involvedObject.name=auto,reason=ScaledUp")  # fmt: skip
        return [e for e in events if "1 -> 4 replicas: AboveTarget" in e["message"]]

    wait_until(scaled_up, TIMEOUT, "a ScaledUp event")
    # Status mirrors the latest round: the scale-up, or (a round later, every 2 s) the hold at 4 and why.
    autoscaling = kubectl.get("lis", "auto")["status"]["autoscaling"]
    decision = autoscaling["lastDecision"]
    assert decision in ({"from": 1, "to": 4, "reason": "AboveTarget"}, {"from": 4, "to": 4, "reason": "CapacityInFlight"},
                        {"from": 4, "to": 4, "reason": "WithinTolerance"}), decision  # fmt: skip
    assert autoscaling["value"] in (8 / ready for ready in range(1, 5))  # 8 pending over the ready replicas
    assert autoscaling["signal"] == "pendingRequests" and autoscaling["lastScaleTime"]

    FakePrometheus.answers = {"sum(nv_inference_pending_request_count": "0", "sum(increase(": "20"}
    deployment_with(kubectl, "auto", 1)
    assert kubectl.get("deployment", "auto")["spec"]["template"] == template

    FakePrometheus.answers = {}  # the metrics vanish: hold, never scale on missing data

    def unknown() -> bool:
        status = kubectl.get("lis", "auto").get("status", {}).get("autoscaling", {})
        return status.get("lastDecision", {}).get("reason") == "SignalUnknown" and "value" not in status

    wait_until(unknown, TIMEOUT, "the autoscaler to report an unknown signal")
    assert kubectl.get("deployment", "auto")["spec"]["replicas"] == 1
    text = lepton_operator.metrics()
    assert 'lepton_inference_scale_decisions_total{direction="up",reason="AboveTarget"}' in text


def test_operator_inference_invalid_spec_is_stalled_then_recovers(
    lepton_operator: RunningOperator, kubectl: Kubectl
) -> None:
    odd = {**SPEC, "model": {**SPEC["model"], "source": {"uri": "https://models.example/res\u00a0net/"}}}
    kubectl.apply(service("odd", odd), "--server-side")  # admitted (RE2's \\S is ASCII), refused by the models
    obj = status_for_generation(kubectl, "odd", "Failed")
    validated = condition(obj, "Validated")
    assert validated is not None and (validated["status"], validated["reason"]) == ("False", "InvalidSpec")
    assert kubectl.get_or_none("deployment", "odd") is None
    kubectl("patch", "lis", "odd", "--type=merge", "-p", json.dumps({"spec": {"model": SPEC["model"]}}))
    obj = status_for_generation(kubectl, "odd", "Ready")  # Failed is recomputed, not one-way
    assert condition(obj, "Validated")["status"] == "True"  # type: ignore[index]


def test_operator_inference_idle_service_scales_to_zero(
    lepton_operator: RunningOperator, kubectl: Kubectl, prometheus: str
) -> None:
    autoscaling = {"minReplicas": 0, "maxReplicas": 2, "target": 2, "scaleToZeroAfterSeconds": 5,
                   "prometheus": {"url": prometheus}}  # fmt: skip
    FakePrometheus.answers = {"sum(nv_inference_pending_request_count": "0", "sum(increase(": "0"}
    kubectl.apply(service("idle", {**SPEC, "autoscaling": autoscaling}), "--server-side")
    deployment_with(kubectl, "idle", 0)  # starts at one replica, no requests for 5 s: zero
    obj = status_for_generation(kubectl, "idle", "ScaledToZero")
    assert condition(obj, "Ready")["status"] == "True"  # type: ignore[index]
    def idle_decision() -> bool:
        decision = kubectl.get("lis", "idle")["status"].get("autoscaling", {}).get("lastDecision", {})
        return decision.get("to") == 0 and decision.get("reason") == "Idle"  # 1 -> 0, then 0 -> 0 holds

    wait_until(idle_decision, TIMEOUT, "the Idle decision in status.autoscaling")

    def idle_event() -> bool:
        events = kubectl.get("events", None, "--field-selector", "involvedObject.name=idle,reason=ScaledDown")
        return any(e["message"].startswith("1 -> 0 replicas: Idle") for e in events)

    wait_until(idle_event, TIMEOUT, "a ScaledDown event for Idle")
