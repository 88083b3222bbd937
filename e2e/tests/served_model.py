"""A tiny TorchScript model for tests of serving on real pods, and an HTTP server that hands it out.

``double`` computes ``2x + 1`` on ``INPUT__0`` (FP32 ``[-1, 4]``): a served answer is checked
exactly. :func:`model_configmap` lays it out as a Triton model (``config.pbtxt``, ``model.pt``) in
a ConfigMap, exported with the host's torch; :func:`model_server` serves that ConfigMap over HTTP
from a pod of the workloads image (``python -m http.server``), so an InferenceService can stage it
from ``model_uri`` as it would from any web server.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import torch

from lepton_workloads import triton_config

MODEL = "double"
SERVER = "model-files"
SERVER_PORT = 8080
SECURE = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
          "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


def model_configmap(name: str = "model") -> dict[str, Any]:
    """The TorchScript model and its config.pbtxt, as the files of a Triton model."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Doubler()), buffer)  # type: ignore[no-untyped-call]
    config = triton_config.ModelConfig(
        name=MODEL, format="pytorch_libtorch", max_batch_size=8,
        inputs=(triton_config.Tensor("INPUT__0", "TYPE_FP32", (4,)),),
        outputs=(triton_config.Tensor("OUTPUT__0", "TYPE_FP32", (4,)),),
    )  # fmt: skip
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"config.pbtxt": triton_config.render(config)},
            "binaryData": {"model.pt": base64.b64encode(buffer.getvalue()).decode()}}  # fmt: skip


def model_server(image: str, configmap: str = "model") -> list[dict[str, Any]]:
    """A pod (the workloads image) serving ``configmap``'s files over HTTP, and its Service :data:`SERVER`."""
    labels = {"app.kubernetes.io/name": SERVER}
    ready = {"httpGet": {"path": "/model.pt", "port": SERVER_PORT}, "periodSeconds": 1}
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": SERVER, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "http", "image": image, "imagePullPolicy": "Never", "securityContext": SECURE,
            "command": ["python", "-m", "http.server", str(SERVER_PORT), "--directory", "/model"],
            "readinessProbe": ready, "volumeMounts": [{"name": "model", "mountPath": "/model", "readOnly": True}],
        }], "volumes": [{"name": "model", "configMap": {"name": configmap}}]},
    }  # fmt: skip
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVER},
               "spec": {"selector": labels, "ports": [{"port": SERVER_PORT, "targetPort": SERVER_PORT}]}}  # fmt: skip
    return [pod, service]


def model_uri() -> str:
    """Where :func:`model_server` serves the model file (the stager finds ``config.pbtxt`` beside it)."""
    return f"http://{SERVER}:{SERVER_PORT}/model.pt"
