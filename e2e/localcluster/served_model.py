"""A tiny TorchScript model for tests of serving on real pods, and a web server that hands it out.

``double`` computes ``2x + 1`` on ``INPUT__0`` (FP32 ``[-1, 4]``): a served answer is checked
exactly. :func:`model_configmap` lays it out as a Triton model (``config.pbtxt``, ``model.pt``) in
a ConfigMap, exported with the host's torch; :func:`model_server` serves that ConfigMap's files
from a pod of the workloads image, so an InferenceService can stage it from :func:`model_uri` (and
a dataset fetch any other file of the ConfigMap, :func:`file_url`) as from any web server.

Over HTTP it is ``python -m http.server``. Given a ``kubernetes.io/tls`` Secret it serves HTTPS
instead: the same handler with its listening socket wrapped in ``ssl`` (:data:`HTTPS_SERVER`), the
certificate and key read from the Secret mounted into the pod, and the URLs name the Service by
``<name>.<namespace>.svc``, the name a test's certificate is made for (:func:`server_names`).
:func:`inference_service` serves it (one replica of the Triton-protocol simulator image),
optionally behind an API key (:func:`key_secret`) and gRPC TLS (``certificates.tls_secret``) or
without its NetworkPolicy: the security e2e tests and ``bench/security_overhead.py`` deploy it so.
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
#: Where the pod reads a ``kubernetes.io/tls`` Secret (``tls.crt``, ``tls.key``) when serving HTTPS.
TLS_DIR = "/tls"
#: ``python -c`` program: serve ``argv[1]`` on port ``argv[2]`` over HTTPS with ``argv[3]`` (cert) and ``argv[4]`` (key).
HTTPS_SERVER = """
import functools, http.server, ssl, sys
directory, port, cert, key = sys.argv[1:]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
httpd = http.server.ThreadingHTTPServer(("", int(port)), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"""
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


def model_server(image: str, configmap: str = "model", tls_secret: str | None = None) -> list[dict[str, Any]]:
    """A pod (the workloads image) serving ``configmap``'s files, and its Service :data:`SERVER`.

    Over HTTP, or over HTTPS with the certificate and key of the ``kubernetes.io/tls`` Secret
    ``tls_secret`` (a handshake a client refuses ends that connection only).
    """
    labels = {"app.kubernetes.io/name": SERVER}
    scheme = "HTTPS" if tls_secret else "HTTP"
    ready = {"httpGet": {"path": "/model.pt", "port": SERVER_PORT, "scheme": scheme}, "periodSeconds": 1}
    mounts = [{"name": "files", "mountPath": "/files", "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "files", "configMap": {"name": configmap}}]
    command = ["python", "-m", "http.server", str(SERVER_PORT), "--directory", "/files"]
    if tls_secret:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret}})
        command = ["python", "-c", HTTPS_SERVER, "/files", str(SERVER_PORT), f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key"]
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": SERVER, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "files", "image": image, "imagePullPolicy": "Never", "securityContext": SECURE,
            "command": command, "readinessProbe": ready, "volumeMounts": mounts,
        }], "volumes": volumes},
    }  # fmt: skip
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVER},
               "spec": {"selector": labels, "ports": [{"port": SERVER_PORT, "targetPort": SERVER_PORT}]}}  # fmt: skip
    return [pod, service]


def server_names(namespace: str) -> list[str]:
    """The subjectAltNames of :func:`model_server`'s certificate in ``namespace`` (for ``make_certificates``)."""
    return [f"DNS:{SERVER}.{namespace}.svc", f"DNS:{SERVER}.{namespace}.svc.cluster.local"]


def file_url(path: str, namespace: str | None = None) -> str:
    """Where :func:`model_server` serves the file ``path``: over HTTP by its short name, or over HTTPS
    (``namespace`` given) by the name its certificate holds."""
    if namespace is None:
        return f"http://{SERVER}:{SERVER_PORT}/{path}"
    return f"https://{SERVER}.{namespace}.svc:{SERVER_PORT}/{path}"


def model_uri(namespace: str | None = None) -> str:
    """Where :func:`model_server` serves the model file (the stager finds ``config.pbtxt`` beside it)."""
    return file_url("model.pt", namespace)


def model_spec(source: dict[str, Any]) -> dict[str, Any]:
    """An InferenceService's ``spec.model`` for :data:`MODEL` from ``source`` (a ``uri`` source)."""
    return {"name": MODEL, "source": source, "maxBatchSize": 8,
            "inputs": [{"name": "INPUT__0", "dims": [4]}], "outputs": [{"name": "OUTPUT__0", "dims": [4]}]}  # fmt: skip


def key_secret(name: str, value: str) -> dict[str, Any]:
    """An Opaque Secret holding an InferenceService's API key under ``apiKey`` (the default key)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {"apiKey": base64.b64encode(value.encode()).decode()}}  # fmt: skip


def inference_service(name: str, simulator: str, *, network_policy: bool = True, key: str | None = None,
                      tls: str | None = None, mutual: bool = False) -> dict[str, Any]:  # fmt: skip
    """One replica of :data:`MODEL` from :func:`model_uri`; ``key`` / ``tls``: the Secrets of ``spec.auth`` / ``spec.tls``."""
    spec: dict[str, Any] = {
        "model": model_spec({"uri": model_uri()}),
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
