"""Each README command does its own set-up: a target that starts the local cluster depends on ``tools`` and ``setup``.

A new user runs ``make demo`` or ``make test`` on a fresh machine. A target that
reaches ``python -m localcluster`` without having installed the Debian packages
(``tools``) or the virtualenv (``setup``) fails there after minutes of builds
(issue #19: ``make demo`` did). ``make -n -B`` prints every recipe a target
would run, prerequisites first, without running any, so the order can be read.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Targets that start, build or use the local cluster.
CLUSTER_TARGETS = ["demo", "test", "e2e", "cluster"]
TOOLS_RECIPE = "dpkg-query"  # the `tools` recipe checks each Debian package with it
SETUP_RECIPE = "pip install"  # the virtualenv's recipe
CLUSTER_RECIPE = "-m localcluster"


def dry_run(target: str, directory: Path = ROOT) -> list[str]:
    """The recipe lines ``make TARGET`` would run in ``directory``, in order."""
    make = shutil.which("make")
    assert make is not None, "make is one of the README's prerequisites"
    done = subprocess.run([make, "-n", "-B", target], cwd=directory, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def first_line(lines: list[str], needle: str) -> int:
    for number, line in enumerate(lines):
        if needle in line:
            return number
    raise AssertionError(f"no recipe line contains {needle!r}:\n" + "\n".join(lines))


@pytest.mark.parametrize("target", CLUSTER_TARGETS)
def test_cluster_targets_install_tools_and_venv_first(target: str) -> None:
    lines = dry_run(target)
    cluster = first_line(lines, CLUSTER_RECIPE)
    assert first_line(lines, TOOLS_RECIPE) < cluster, f"`make {target}` reaches the cluster before `tools`"
    assert first_line(lines, SETUP_RECIPE) < cluster, f"`make {target}` reaches the cluster before `setup`"


def test_the_check_sees_a_missing_dependency(tmp_path: Path) -> None:
    """The same reading, on a Makefile whose demo lacks ``tools``, fails: the check can catch the bug."""
    makefile = (ROOT / "Makefile").read_text().replace("demo: setup tools\n", "demo: setup\n")
    assert "demo: setup\n" in makefile
    (tmp_path / "Makefile").write_text(makefile)
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    lines = dry_run("demo", tmp_path)
    first_line(lines, CLUSTER_RECIPE)
    with pytest.raises(AssertionError, match="no recipe line contains"):
        first_line(lines, TOOLS_RECIPE)
