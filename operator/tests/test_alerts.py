"""The shipped PrometheusRule is valid for Prometheus and only names metrics that exist.

promtool (Debian's prometheus package, installed by `make tools`) checks the
rule groups; the metric names in every expression must be ones the operator's
registry exports, so renaming a metric without its alert fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from lepton_operator import metrics

RULES = Path(__file__).resolve().parents[2] / "manifests" / "components" / "monitoring" / "prometheusrule.yaml"


def rule_groups() -> dict[str, Any]:
    document = yaml.safe_load(RULES.read_text())
    return {"groups": document["spec"]["groups"]}


def exported_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make tools` (Debian package prometheus)"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_lepton_metric_in_the_rules_is_exported() -> None:
    exported = exported_names()
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            for name in re.findall(r"\blepton_[a-z_]+\b", rule["expr"]):
                assert name in exported, f"alert {rule['alert']} uses {name}, which the operator does not export"
