"""Every shipped image, built from ``images/`` with buildah, runs its real entry point on the real node.

* operator: the in-cluster Deployment (``incluster_operator``) answers its health probe;
* workloads: ``python -m lepton_workloads`` lists its entry points, the trainer and the preparer
  answer ``--help``, and torch imports;
* triton-simulator: serves a TorchScript model (exported here with the host's torch, handed over
  in a ConfigMap) both through its own entry point and through the ``tritonserver`` command line
  the operator renders for an InferenceService, and answers ``/v2/health/ready`` and an inference.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from incluster_fixtures import InClusterOperator
from localcluster.images import Image
from localcluster.kube import Kubectl, wait_until
from localcluster.served_model import MODEL, SECURE, model_configmap
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.render import inference

pytestmark = pytest.mark.e2e

TIMEOUT = 120.0


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    for container in containers:
        container.setdefault("imagePullPolicy", "Never")
        container.setdefault("securityContext", SECURE)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": containers, **spec}}  # fmt: skip


def phase(kubectl: Kubectl, name: str) -> str:
    return str(kubectl.get("pod", name)["status"].get("phase"))


def test_operator_image_answers_its_health_probe(incluster_operator: InClusterOperator) -> None:
    for running in incluster_operator.pods():
        assert running["spec"]["containers"][0]["image"] == incluster_operator.image
        assert incluster_operator.proxy(running["metadata"]["name"], 8081, "/healthz")


def test_workloads_image_imports_torch_and_runs_its_entry_points(
    built_images: dict[str, Image], real_namespace: str, cluster_kubectl: Kubectl
) -> None:
    kubectl = cluster_kubectl.in_namespace(real_namespace)
    image = built_images["workloads"].ref
    containers = [
        {"name": "entry-points", "image": image},  # the image's own ENTRYPOINT and CMD
        {"name": "train", "image": image, "args": ["lepton_workloads.train", "--help"]},
        {"name": "prepare", "image": image, "args": ["lepton_workloads.prepare", "--help"]},
        {"name": "torch", "image": image, "command": ["python", "-c"],
         "args": ["import torch; print('torch', torch.__version__, torch.ones(2).sum().item())"]},
    ]  # fmt: skip
    kubectl.apply(pod("workloads", containers, restartPolicy="Never"))
    assert wait_until(lambda: phase(kubectl, "workloads") in ("Succeeded", "Failed") and phase(kubectl, "workloads"),
                      TIMEOUT, "the workloads pod to finish") == "Succeeded"  # fmt: skip
    logs = {c["name"]: kubectl("logs", "workloads", "-c", c["name"]) for c in containers}
    assert "lepton_workloads.prepare" in logs["entry-points"] and "lepton_workloads.train" in logs["entry-points"]
    assert "usage:" in logs["train"] and "usage:" in logs["prepare"]
    assert logs["torch"].startswith(f"torch {torch.__version__.split('+')[0]}") and logs["torch"].split()[-1] == "2.0"


def test_triton_simulator_image_serves_a_model_as_the_operator_runs_triton(
    built_images: dict[str, Image], real_namespace: str, cluster_kubectl: Kubectl
) -> None:
    kubectl = cluster_kubectl.in_namespace(real_namespace)
    kubectl.apply(model_configmap())
    image = built_images["triton-simulator"].ref
    # The command line the operator renders for an InferenceService's Triton container, on
    # other ports so that both containers fit in one pod.
    spec = InferenceServiceSpec.model_validate({"model": {"name": MODEL, "source": {"uri": "https://h/m"}}})
    rendered = inference.pod_template("serve", spec, inference.UriSource("https://h/m"), image)["spec"]["containers"][0]
    shifted = [a.replace("=8000", "=9000").replace("=8002", "=9002") for a in rendered["args"]]
    ready = {"httpGet": {"path": "/v2/health/ready", "port": 8000}, "periodSeconds": 1}
    mount = [{"name": "models", "mountPath": f"/models/{MODEL}"}]
    containers = [
        {"name": "simulator", "image": image, "volumeMounts": mount, "readinessProbe": ready,
         "args": ["--model-repository=/models", f"--model={MODEL}", "--host=0.0.0.0"]},
        {"name": "tritonserver", "image": image, "volumeMounts": mount, "command": rendered["command"],
         "args": shifted, "readinessProbe": {**ready, "httpGet": {"path": f"/v2/models/{MODEL}/ready", "port": 9000}}},
    ]  # fmt: skip
    volume = {"name": "models", "configMap": {"name": "model", "items": [
        {"key": "config.pbtxt", "path": "config.pbtxt"}, {"key": "model.pt", "path": "1/model.pt"}]}}  # fmt: skip
    kubectl.apply(pod("simulator", containers, volumes=[volume]))
    kubectl("wait", "--for=condition=Ready", "pod/simulator", f"--timeout={TIMEOUT:.0f}s", timeout=TIMEOUT + 10)
    base = f"/api/v1/namespaces/{real_namespace}/pods/simulator"
    request = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]}
    for port in (8000, 9000):
        assert kubectl.run("get", "--raw", f"{base}:{port}/proxy/v2/health/ready").returncode == 0
        answer = json.loads(kubectl("create", "--raw", f"{base}:{port}/proxy/v2/models/{MODEL}/infer", "-f", "-",
                                    input=json.dumps(request)))  # fmt: skip
        assert answer["outputs"][0]["data"] == [1.0, 3.0, 5.0, 7.0]
    assert "nv_inference_request_success" in kubectl("get", "--raw", f"{base}:9002/proxy/metrics")
    assert "not Triton; ignoring" in kubectl("logs", "simulator", "-c", "tritonserver")
