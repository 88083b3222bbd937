"""The Grafana dashboard queries only metrics (and labels) the operator really exports.

A renamed metric or label would leave an empty panel nobody notices; here it
fails a test instead. The registry is populated the way the reconcilers do it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lepton_operator import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "manifests" / "dashboards" / "lepton.json"


def queries() -> list[tuple[str, str]]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    found = [(panel["title"], target["expr"]) for panel in document["panels"] for target in panel["targets"]]
    found += [("variable " + var["name"], var["query"]) for var in document["templating"]["list"] if var["type"] == "query"]
    return found


def exported() -> dict[str, set[str]]:
    """Sample name -> label names of every metric registered (observed or not yet)."""
    names: dict[str, set[str]] = {}
    for collector, samples in metrics.REGISTRY._collector_to_names.items():
        labels = set(getattr(collector, "_labelnames", ()))
        for sample in samples:
            names[sample] = labels | ({"le"} if sample.endswith("_bucket") else set())
    return names


def test_dashboard_covers_what_users_watch() -> None:
    titles = " ".join(title for title, _ in queries()).lower()
    for topic in ("by phase", "workers", "restarts", "dataset bytes", "replicas vs desired", "signal vs target", "latency"):
        assert topic in titles


@pytest.mark.parametrize(("title", "expr"), queries(), ids=[title for title, _ in queries()])
def test_query_names_exported_metrics_and_labels(title: str, expr: str) -> None:
    known = exported()
    for name in re.findall(r"\blepton_[a-z_]+\b", expr):
        assert name in known, f"{title}: {name} is not exported by the operator"
        grouped = re.findall(r"by \(([^)]*)\)", expr)
        for group in grouped:
            for label in (part.strip() for part in group.split(",")):
                assert any(label in labels for labels in known.values()), f"{title}: no metric has label {label}"
