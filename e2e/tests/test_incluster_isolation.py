"""The host-process operator and the in-cluster one never serve the same namespace (no cluster needed)."""

from __future__ import annotations

from fnmatch import fnmatchcase
from types import SimpleNamespace
from typing import Any, cast

import pytest
from kopf._cogs.structs.references import match_namespace

from conftest import _namespace_name
from incluster_fixtures import NAMESPACE_PREFIX
from localcluster import incluster
from localcluster.images import Image
from operator_fixtures import namespace_patterns

NAMES = ["test_incluster_operator_reconciles_a_gpu_training_job_onto_kwok_nodes", "test_training_retry",
         "test_ic", "test_[param-1]"]  # fmt: skip


def test_host_operator_globs_never_match_a_namespace_the_incluster_operator_serves() -> None:
    items = [SimpleNamespace(name=name, fixturenames=("lepton_operator", "namespace")) for name in NAMES]
    patterns = namespace_patterns(cast(list[pytest.Item], items))
    assert patterns
    served = incluster.SERVED_NAMESPACES  # kopf's own matcher decides, as in the operator
    for name in NAMES:
        host, ours = _namespace_name(name), NAMESPACE_PREFIX + _namespace_name(name)
        assert len(ours) <= 63
        assert any(fnmatchcase(host, pattern) for pattern in patterns) and not match_namespace(host, served)
        assert match_namespace(ours, served) and not any(fnmatchcase(ours, pattern) for pattern in patterns)
    for other in ("lepton-demo", "kube-system", "team-a"):
        assert match_namespace(other, served)  # the demo and users' namespaces


def test_the_incluster_install_pins_the_build_tags_and_leaves_the_test_namespaces_out(tmp_path: Any) -> None:
    import yaml  # noqa: PLC0415

    built = {"operator": Image("localhost/lepton-operator:k1", tmp_path / "o.tar"),
             "workloads": Image("localhost/lepton-workloads:k2", tmp_path / "w.tar")}  # fmt: skip
    document = yaml.safe_load(incluster.kustomization(built, tmp_path))
    assert document["images"] == [{"name": "localhost/lepton-operator", "newTag": "k1"}]
    patches = " ".join(patch["patch"] for patch in document["patches"])
    assert "--namespace=!test*" in patches and "localhost/lepton-workloads:k2" in patches
    assert "LEPTON_ACTIVATOR_IMAGE" in patches and "localhost/lepton-operator:k1" in patches  # activators: the same build
    assert (tmp_path / document["resources"][0] / "kustomization.yaml").is_file()
