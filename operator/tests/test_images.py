"""The Dockerfiles: pinned bases given as a build argument, non-root, entry points that exist.

Parse-level checks; building them for real needs a container engine (the
real-node work builds them with buildah).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = sorted((REPO / "images").glob("*/Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.parent.name)
def test_base_is_a_pinned_build_argument(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE=")
    base = steps[0][1].split("=", 1)[1]
    assert re.search(r":\d+\.\d+\.\d+", base), f"base {base} is not pinned to a patch version"
    assert ("FROM", "${BASE}") in steps


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.parent.name)
def test_runs_as_non_root(dockerfile: Path) -> None:
    users = [rest for keyword, rest in instructions(dockerfile) if keyword == "USER"]
    assert users and not users[-1].startswith(("0", "root"))


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.parent.name)
def test_copied_paths_exist_and_are_not_ignored(dockerfile: Path) -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")}
    for keyword, rest in instructions(dockerfile):
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert source.rstrip("/") not in ignored, f"{source} is copied but .dockerignore drops it"


def test_operator_entrypoint_is_the_console_script() -> None:
    steps = dict(instructions(REPO / "images" / "operator" / "Dockerfile"))
    assert json.loads(steps["ENTRYPOINT"]) == ["lepton-operator"]
    assert shutil.which("lepton-operator") or (REPO / ".venv" / "bin" / "lepton-operator").exists()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'lepton-operator = "lepton_operator.cli:main"' in pyproject


def test_workloads_entrypoint_runs_a_module_of_the_package() -> None:
    steps = dict(instructions(REPO / "images" / "workloads" / "Dockerfile"))
    assert json.loads(steps["ENTRYPOINT"]) == ["python", "-m"]
    module = json.loads(steps["CMD"])[0]
    assert (REPO / "workloads" / module.replace(".", "/")).exists()
    assert (REPO / "workloads" / "lepton_workloads" / "__main__.py").exists()
