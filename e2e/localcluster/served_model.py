"""A tiny TorchScript model served on real pods: its files, an HTTP server for them, an InferenceService of it.

``double`` computes ``2x + 1`` on ``INPUT__0`` (FP32 ``[-1, 4]``): a served answer is checked
exactly. :func:`model_configmap` lays it out as a Triton model (``config.pbtxt``, ``model.pt``) in
a ConfigMap, exported with the host's torch; :func:`model_server` serves that ConfigMap over HTTP
from a pod of the workloads image (``python -m http.server``), so an InferenceService can stage it
from ``model_uri`` as it would from any web server. :func:`inference_service` serves it (one
replica of the Triton-protocol simulator image), optionally behind an API key
(:func:`key_secret`) and gRPC TLS (:func:`tls_secret`) or without its NetworkPolicy: the security
e2e tests and ``bench/security_overhead.py`` deploy it that way.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import torch

from localcluster.certificates import Certificates
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
    torch.jit.save(torch.jit.script(Doubler()), buffer)
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


def key_secret(name: str, value: str) -> dict[str, Any]:
    """An Opaque Secret holding an InferenceService's API key under ``apiKey`` (the default key)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {"apiKey": base64.b64encode(value.encode()).decode()}}  # fmt: skip


def tls_secret(name: str, certificates: Certificates) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret (as cert-manager writes it) of the server certificate and its CA."""
    files = {"tls.crt": certificates.server_cert, "tls.key": certificates.server_key, "ca.crt": certificates.ca}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "kubernetes.io/tls",
            "data": {key: base64.b64encode(path.read_bytes()).decode() for key, path in files.items()}}  # fmt: skip


def inference_service(name: str, simulator: str, *, network_policy: bool = True, key: str | None = None,
                      tls: str | None = None, mutual: bool = False) -> dict[str, Any]:  # fmt: skip
    """One replica of :data:`MODEL` from :func:`model_uri`; ``key`` / ``tls``: the Secrets of ``spec.auth`` / ``spec.tls``."""
    spec: dict[str, Any] = {
        "model": {"name": MODEL, "source": {"uri": model_uri()}, "maxBatchSize": 8,
                  "inputs": [{"name": "INPUT__0", "dims": [4]}], "outputs": [{"name": "OUTPUT__0", "dims": [4]}]},
        "triton": {"image": simulator},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "replicas": 1,
    }  # fmt: skip
    if not network_policy:
        spec["networkPolicy"] = {"enabled": False}
    if key is not None:
        spec["auth"] = {"apiKeySecretRef": {"name": key}}
    if tls is not None:
        spec["tls"] = {"secretName": tls, "mutual": mutual}
    return {"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": name}, "spec": spec}
