"""The host-process operator and the in-cluster one never serve the same namespace (no cluster needed)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from types import SimpleNamespace
from typing import Any, cast

import pytest

from conftest import _namespace_name
from incluster_fixtures import NAMESPACE_PREFIX, kustomization
from localcluster.images import Image
from operator_fixtures import namespace_patterns

NAMES = ["test_incluster_operator_reconciles_a_gpu_training_job_onto_kwok_nodes", "test_training_retry",
         "test_ic", "test_[param-1]"]  # fmt: skip


def test_host_operator_globs_never_match_an_incluster_namespace() -> None:
    items = [SimpleNamespace(name=name, fixturenames=("lepton_operator", "namespace")) for name in NAMES]
    patterns = namespace_patterns(cast(list[pytest.Item], items))
    assert patterns
    for name in NAMES:
        incluster = NAMESPACE_PREFIX + _namespace_name(name)
        assert len(incluster) <= 63
        assert not any(fnmatchcase(incluster, pattern) for pattern in patterns), incluster
        assert fnmatchcase(incluster, f"{NAMESPACE_PREFIX}*")  # what the in-cluster operator serves
        assert not fnmatchcase(_namespace_name(name), f"{NAMESPACE_PREFIX}*")  # a host test's namespace


def test_the_incluster_install_pins_the_build_tags_and_its_own_namespaces(tmp_path: Any) -> None:
    import yaml  # noqa: PLC0415

    built = {"operator": Image("localhost/lepton-operator:k1", tmp_path / "o.tar"),
             "workloads": Image("localhost/lepton-workloads:k2", tmp_path / "w.tar")}  # fmt: skip
    document = yaml.safe_load(kustomization(built, tmp_path))
    assert document["images"] == [{"name": "localhost/lepton-operator", "newTag": "k1"}]
    patches = " ".join(patch["patch"] for patch in document["patches"])
    assert f"--namespace={NAMESPACE_PREFIX}*" in patches and "localhost/lepton-workloads:k2" in patches
    assert (tmp_path / document["resources"][0] / "kustomization.yaml").is_file()
