"""One setting names the image of every pod that runs Lepton's own code.

Dataset prepare Jobs and the model-staging init container of Triton replicas
both run the workloads image; the operator reads it from
``LEPTON_WORKLOADS_IMAGE`` (set by the Deployment, swapped by overlays), and
falls back to the released image, the one ``manifests/base`` names.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.controllers import config
from lepton_operator.controllers import dataset as dataset_controller
from lepton_operator.controllers import inference as inference_controller
from lepton_operator.render.common import DEFAULT_WORKLOADS_IMAGE
from lepton_operator.render.activator import DEFAULT_IMAGE as DEFAULT_ACTIVATOR_IMAGE

from fake_kube import FakeKube, fake  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[2]
LOCAL = "localhost/lepton-workloads:test"


def test_the_environment_wins_and_the_default_is_the_released_image() -> None:
    assert config.workloads_image({config.WORKLOADS_IMAGE_ENV: LOCAL}) == LOCAL
    assert config.workloads_image({config.WORKLOADS_IMAGE_ENV: ""}) == DEFAULT_WORKLOADS_IMAGE
    assert config.workloads_image({}) == DEFAULT_WORKLOADS_IMAGE


def test_the_shipped_deployment_sets_the_released_image() -> None:
    deployment = yaml.safe_load((REPO / "manifests" / "base" / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env[config.WORKLOADS_IMAGE_ENV] == DEFAULT_WORKLOADS_IMAGE


def test_activators_run_the_operator_image_the_deployment_names() -> None:
    assert config.activator_image({config.ACTIVATOR_IMAGE_ENV: "localhost/lepton-operator:t"}) == "localhost/lepton-operator:t"
    assert config.activator_image({}) == DEFAULT_ACTIVATOR_IMAGE
    deployment = yaml.safe_load((REPO / "manifests" / "base" / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env[config.ACTIVATOR_IMAGE_ENV] == DEFAULT_ACTIVATOR_IMAGE
    assert DEFAULT_ACTIVATOR_IMAGE.rsplit(":", 1)[0] == container["image"]  # the operator's own image, released tag


def test_prepare_jobs_run_the_configured_image(fake: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.WORKLOADS_IMAGE_ENV, LOCAL)
    body = {"metadata": {"namespace": "ns", "name": "d", "uid": "u1", "generation": 1},
            "spec": {"source": {"uri": "https://h/x/"}, "modality": "text"}, "status": {}}  # fmt: skip
    dataset_controller.reconcile_dataset(body, {}, retry=0, logger=logging.getLogger("test"), warn=lambda r, m: None)
    [job] = [o for key, o in fake.objects.items() if key[0] == "Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == LOCAL


def test_triton_replicas_stage_the_model_with_the_configured_image(fake: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.WORKLOADS_IMAGE_ENV, LOCAL)
    raw: dict[str, Any] = {"model": {"name": "m", "source": {"claim": {"name": "models", "path": "m/v1"}}}}
    spec = InferenceServiceSpec.model_validate(raw)
    body = {"metadata": {"namespace": "ns", "name": "serve", "uid": "u1", "generation": 1}, "spec": raw}
    inference_controller.converge(body, spec, datetime.now(UTC))
    deployment = fake.objects[("Deployment", "ns", "serve")]
    pod = deployment["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["initContainers"]] == [LOCAL]
    assert pod["containers"][0]["image"] == spec.triton.image  # the server keeps its own image
