"""The model stager against a real S3-compatible server (versitygw, the ``s3_server`` fixture).

A real TorchScript model is exported the way a TrainingJob exports it and
uploaded under a prefix; the stager runs as the init container does (a
subprocess with the environment the operator renders: endpoint, region, and
the keys that come from the Secret by reference).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lepton_workloads import triton_config
from s3_server import S3Server
from sample_data import export_model, run_stager

BUCKET = "models"


@pytest.fixture(scope="module")
def exported(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``exports/resnet/config.pbtxt`` and ``exports/resnet/1/model.pt`` in the bucket; the local export."""
    directory = export_model(tmp_path_factory.mktemp("export"), "resnet")
    client = s3_server.client()
    client.make_bucket(BUCKET)
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            client.fput_object(BUCKET, f"exports/resnet/{path.relative_to(directory).as_posix()}", str(path))
    return directory


def staged_config(repository: Path) -> triton_config.ModelConfig:
    return triton_config.from_protobuf(triton_config.parse((repository / "served" / "config.pbtxt").read_text()))


def test_exported_prefix_is_staged_with_credentials(s3_server: S3Server, exported: Path, tmp_path: Path) -> None:
    run = run_stager(tmp_path, f"s3://{BUCKET}/exports/", "--dynamic-batching", **s3_server.env())
    assert run.code == 0, run.stderr
    staged = run.repository / "served" / "1" / "model.pt"
    assert staged.read_bytes() == (exported / "1" / "model.pt").read_bytes()
    assert torch.jit.load(str(staged))(torch.ones(3, 4)).shape == (3, 2)
    config = staged_config(run.repository)
    assert (config.name, config.max_batch_size, config.dynamic_batching) == ("served", 16, True)
    assert config.inputs == (triton_config.Tensor("INPUT__0", "TYPE_FP32", (4,)),)
    assert sorted(p.name for p in run.repository.iterdir()) == ["served"]  # the fetch directory is gone


def test_single_object_takes_the_exported_config(s3_server: S3Server, exported: Path, tmp_path: Path) -> None:
    run = run_stager(tmp_path, f"s3://{BUCKET}/exports/resnet/1/model.pt", **s3_server.env())
    assert run.code == 0, run.stderr
    assert (run.repository / "served" / "1" / "model.pt").read_bytes() == (exported / "1" / "model.pt").read_bytes()
    assert staged_config(run.repository).outputs == (triton_config.Tensor("OUTPUT__0", "TYPE_FP32", (2,)),)


def test_wrong_keys_are_access_denied(s3_server: S3Server, exported: Path, tmp_path: Path) -> None:
    env = s3_server.env(AWS_SECRET_ACCESS_KEY="wrong-secret")
    run = run_stager(tmp_path, f"s3://{BUCKET}/exports/", **env)
    assert run.code == 1
    assert run.termination.startswith(f"AccessDenied: s3://{BUCKET}/exports/: SignatureDoesNotMatch"), run.termination
    assert run.stderr.splitlines()[-1] == f"stage_model: {run.termination}"
    assert "wrong-secret" not in run.stderr
    assert not (run.repository / "served" / "1" / "model.pt").exists()


def test_anonymous_access_is_refused(s3_server: S3Server, exported: Path, tmp_path: Path) -> None:
    run = run_stager(tmp_path, f"s3://{BUCKET}/exports/resnet/1/model.pt", LEPTON_S3_ENDPOINT=s3_server.endpoint)
    assert run.code == 1 and run.termination.startswith("AccessDenied: "), run.termination


def test_an_empty_prefix_has_no_model(s3_server: S3Server, exported: Path, tmp_path: Path) -> None:
    run = run_stager(tmp_path, f"s3://{BUCKET}/nothing/", **s3_server.env())
    assert run.code == 1 and run.termination == f"ModelNotFound: no model.pt under s3://{BUCKET}/nothing/"
