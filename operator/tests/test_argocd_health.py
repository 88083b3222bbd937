"""The Argo CD health script, run by a real Lua 5.1 (Argo CD embeds gopher-lua, a Lua 5.1).

Sample objects are the statuses the operator writes (status.validation builds
the foundation ones), so the mapping is tested against real condition shapes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from lepton_operator.status import validation

ARGOCD = Path(__file__).resolve().parents[2] / "manifests" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def cond(kind: str, status: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": "R", "message": message}


def obj(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "x", "generation": generation}}
    if status is not None:
        body["status"] = status
    return body


@pytest.mark.parametrize(
    ("status", "generation", "expected"),
    [
        (None, 1, "Progressing"),
        ({"observedGeneration": 1, "phase": "Ready", "conditions": [cond("Ready", "True", "ok")]}, 2, "Progressing"),
        ({"observedGeneration": 2, "phase": "Ready", "conditions": [cond("Ready", "True", "ok")]}, 2, "Healthy"),
        ({"observedGeneration": 1, "phase": "Succeeded", "conditions": [cond("Ready", "False", "done")]}, 1, "Healthy"),
        ({"observedGeneration": 1, "phase": "Failed", "conditions": [cond("Ready", "False", "exit 1")]}, 1, "Degraded"),
        ({"observedGeneration": 1, "phase": "Pending",
          "conditions": [cond("Ready", "False"), cond("Stalled", "True", "bad spec")]}, 1, "Degraded"),  # fmt: skip
        ({"observedGeneration": 1, "phase": "Suspended", "conditions": [cond("Ready", "False", "suspended")]}, 1,
         "Suspended"),  # fmt: skip
        ({"observedGeneration": 1, "phase": "Running", "conditions": [cond("Ready", "False", "2/4 running")]}, 1,
         "Progressing"),  # fmt: skip
    ],
)
def test_health_from_conditions(status: dict[str, Any] | None, generation: int, expected: str) -> None:
    assert health(obj(status, generation))[0] == expected


def test_degraded_message_is_the_stalled_condition_message_the_operator_writes() -> None:
    spec = {"workers": {"replicas": 0}}
    parsed = validation.parse_spec("TrainingJob", spec)
    status = validation.foundation_status("TrainingJob", 4, spec, parsed, {}, NOW)
    state, message = health(obj(status, 4))
    assert state == "Degraded"
    assert "spec.workers.replicas" in message


def test_operator_pending_status_is_progressing() -> None:
    spec = {"image": "t:1"}
    status = validation.foundation_status("TrainingJob", 1, spec, validation.parse_spec("TrainingJob", spec), {}, NOW)
    assert health(obj(status))[0] == "Progressing"


def test_kustomization_installs_the_script_for_all_three_kinds() -> None:
    kustomization = yaml.safe_load((ARGOCD / "kustomization.yaml").read_text())
    files = kustomization["configMapGenerator"][0]["files"]
    assert {entry.split("=")[0] for entry in files} == {
        f"resource.customizations.health.lepton.ai_{kind}" for kind in ("LeptonDataset", "TrainingJob", "InferenceService")
    }
    assert all(entry.endswith("=health.lua") for entry in files)
