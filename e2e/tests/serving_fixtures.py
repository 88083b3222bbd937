"""What the autoscaling e2e tests share: a doubling model's repository, a Prometheus, and their readers.

The model is a TorchScript module doubling its input, with the ``config.pbtxt``
Triton would load (rendered by ``triton_config``); the Triton-protocol
simulators of ``localcluster.serving.Replicas`` serve it for every Ready
replica. The ``prometheus`` fixture is a real (Debian) Prometheus scraping them,
stopped after the test; :meth:`Prometheus.stop` and :meth:`Prometheus.start`
also take it down and bring it back mid-test (same port, same data).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lepton_workloads import triton_config
from localcluster.kube import Kubectl, wait_until
from localcluster.serving import Prometheus

MODEL = "double"
SERVICE_TIME_MS = 100.0  # one instance per replica: 10 requests/s at most


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def model_spec() -> dict[str, Any]:
    """``spec.model`` of an InferenceService serving the doubler (the source is never fetched: kwok replicas)."""
    return {"name": MODEL, "source": {"uri": "https://models.example/double/"}, "maxBatchSize": 8,
            "inputs": [{"name": "INPUT__0", "dims": [4]}], "outputs": [{"name": "OUTPUT__0", "dims": [4]}]}  # fmt: skip


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    (tmp_path / "models" / MODEL / "1").mkdir(parents=True)
    torch.jit.script(Doubler()).save(str(tmp_path / "models" / MODEL / "1" / "model.pt"))
    tensor = (triton_config.Tensor("INPUT__0", "TYPE_FP32", (4,)),)
    config = triton_config.ModelConfig(MODEL, "pytorch_libtorch", tensor, (triton_config.Tensor("OUTPUT__0", "TYPE_FP32", (4,)),), max_batch_size=8)
    (tmp_path / "models" / MODEL / "config.pbtxt").write_text(triton_config.render(config))
    return tmp_path / "models"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    (tmp_path / "prometheus").mkdir()
    server = Prometheus(tmp_path / "prometheus")
    yield server
    server.stop()


def promql(prometheus: Prometheus, query: str) -> list[Any]:
    url = prometheus.url + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as response:
        result: list[Any] = json.loads(response.read())["data"]["result"]
        return result


def replicas_of(kubectl: Kubectl, name: str) -> int:
    return int(kubectl.get("deployment", name)["spec"]["replicas"])


def apply_autoscaled(kubectl: Kubectl, name: str, prometheus: Prometheus, **autoscaling: Any) -> str:
    """Apply an InferenceService ``name`` serving the doubler, autoscaled on ``prometheus``; its pods' selector."""
    spec = {"model": model_spec(), "autoscaling": {**autoscaling, "prometheus": {"url": prometheus.url}}}
    kubectl.apply({"apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
                   "spec": spec}, "--server-side")  # fmt: skip
    selector: str = wait_until(lambda: kubectl.get("lis", name).get("status", {}).get("selector"), 60, "status.selector")
    return selector
