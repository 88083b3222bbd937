"""The Dockerfiles as users build them: pinned bases as a build argument, non-root, small contexts.

These read the files; ``e2e/tests/test_images_run.py`` builds every image with
buildah (``localcluster.lepton_images``) and runs each one's entry point on the
local cluster's real node.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from localcluster.images import dockerfile_sources, dockerignore_matcher
from localcluster.lepton_images import BUILDS

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


def ignored(rel: str) -> bool:
    return dockerignore_matcher((REPO / ".dockerignore").read_text())(rel)


def test_the_harness_builds_every_dockerfile() -> None:
    assert sorted(REPO / build.dockerfile for build in BUILDS) == IMAGES


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.parent.name)
def test_base_is_a_pinned_build_argument(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert steps[0][0] == "ARG" and steps[0][1].startswith("BASE=")
    base = steps[0][1].split("=", 1)[1]
    assert re.search(r":\d+\.\d+\.\d+", base), f"base {base} is not pinned to a patch version"
    assert ("FROM", "${BASE}") in steps


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.parent.name)
def test_runs_as_the_deployments_non_root_user(dockerfile: Path) -> None:
    users = [rest for keyword, rest in instructions(dockerfile) if keyword == "USER"]
    assert users and users[-1] == "65532:65532"


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.parent.name)
def test_copied_paths_exist_and_are_in_the_context(dockerfile: Path) -> None:
    for source in dockerfile_sources(dockerfile.read_text()):
        assert (REPO / source).exists(), source
        assert not ignored(source), f"{source} is copied but .dockerignore drops it"


def test_the_build_context_is_only_what_the_images_copy() -> None:
    for heavy in (".git", ".venv", ".lepton", "e2e/localcluster/cluster.py", "operator/tests/test_images.py",
                  "workloads/lepton_workloads/__pycache__/train.cpython-311.pyc", "docs", "bench"):
        assert ignored(heavy), heavy
    for needed in ("pyproject.toml", "README.md", "operator/lepton_operator/cli.py", "workloads/lepton_workloads/train.py"):
        assert not ignored(needed), needed


@pytest.mark.parametrize("name", ["operator", "workloads"])
def test_dependencies_install_in_a_layer_of_their_own_from_pyproject(name: str, tmp_path: Path) -> None:
    """The layer of torch & co. depends on pyproject.toml alone, and lists exactly its dependencies."""
    steps = instructions(REPO / "images" / name / "Dockerfile")
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    assert copies[0] == "pyproject.toml ./"
    first_run = next(rest for keyword, rest in steps if keyword == "RUN")
    assert steps.index(("RUN", first_run)) < steps.index(("COPY", copies[1]))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    extract = first_run.split(" > ")[0]
    assert extract.startswith("python -c ")
    script = extract.removeprefix("python -c ").strip("'")
    listed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + (project["optional-dependencies"]["workloads"] if name == "workloads" else [])
    assert listed.stdout.split("\n")[:-1] == wanted
    if name == "operator":
        assert [rest for keyword, rest in steps if keyword == "RUN"][-1].startswith("pip install --no-deps . ")
    else:  # only the package that runs in pods, on the path: operator or README edits leave the image alone
        assert copies[1:] == ["workloads/lepton_workloads /opt/lepton/lepton_workloads"]
        assert ("ENV", "PYTHONPATH=/opt/lepton") in steps


def test_operator_entrypoint_is_the_console_script() -> None:
    steps = dict(instructions(REPO / "images" / "operator" / "Dockerfile"))
    assert json.loads(steps["ENTRYPOINT"]) == ["lepton-operator"]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'lepton-operator = "lepton_operator.cli:main"' in pyproject


def test_workloads_entrypoint_runs_a_module_of_the_package() -> None:
    steps = dict(instructions(REPO / "images" / "workloads" / "Dockerfile"))
    assert json.loads(steps["ENTRYPOINT"]) == ["python", "-m"]
    module = json.loads(steps["CMD"])[0]
    assert (REPO / "workloads" / module.replace(".", "/")).exists()
    assert (REPO / "workloads" / "lepton_workloads" / "__main__.py").exists()


def test_the_simulator_is_the_workloads_image_with_a_tritonserver_stand_in() -> None:
    from lepton_workloads.triton_simulator import TRITONSERVER_FLAGS  # noqa: PLC0415 - imports torch

    dockerfile = REPO / "images" / "triton-simulator" / "Dockerfile"
    steps = instructions(dockerfile)
    assert steps[0] == ("ARG", "BASE=lepton/workloads:0.1.0")
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["python", "-m", "lepton_workloads.triton_simulator"]
    script = next(rest for keyword, rest in steps if keyword == "RUN")
    assert "/usr/local/bin/tritonserver" in script
    assert f'exec python -m lepton_workloads.triton_simulator {TRITONSERVER_FLAGS} "$@"' in script
    assert "NOT Triton" in dockerfile.read_text()
