"""An in-memory stand-in for ``controllers.kube``, shared by the reconcilers' unit tests.

It keeps objects in a dict and answers get/apply/list/delete the way the API
server does for what the reconcilers ask; the real API server path is covered
by the e2e tests. ``fake`` (a fixture) patches it into ``controllers.kube``.
"""

from __future__ import annotations

from typing import Any

import pytest

from lepton_operator.controllers import kube, network

Key = tuple[str, str, str]


def cpu_node(name: str, cpus: int) -> dict[str, Any]:
    """A Ready node with ``cpus`` cores (and room for 110 pods), as a cluster listing shows it."""
    return {"metadata": {"name": name}, "status": {"allocatable": {"cpu": str(cpus), "memory": "64Gi", "pods": "110"},
                                                   "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.deleted: list[str] = []

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace or "", name))

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        self.objects[key] = {**self.objects.get(key, {}), **manifest}
        return self.objects[key]

    def list_labelled(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        wanted = dict(part.split("=", 1) for part in selector.split(","))
        return [o for (k, ns, _), o in self.objects.items() if k == kind and ns == namespace
                and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in wanted.items())]  # fmt: skip

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, propagation: str = "") -> bool:
        """Foreground deletion: the object stays, marked, until the test removes it."""
        self.deleted.append(name)
        found = self.objects.get((kind, namespace or "", name))
        if found is not None:
            found["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return found is not None


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    api = FakeKube()
    for name in ("get", "apply", "list_labelled", "delete"):
        monkeypatch.setattr(kube, name, getattr(api, name))
    monkeypatch.setattr(network, "POLICIES", network.PolicySync())  # no policy synced by an earlier test
    return api
