"""Staging a Triton model repository from a directory or an http(s) URI."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_workloads import stage_model, triton_config

EXPORTED = triton_config.ModelConfig(
    name="trainer-name",
    format="pytorch_libtorch",
    inputs=(triton_config.Tensor("INPUT__0", "TYPE_FP32", (4,)),),
    outputs=(triton_config.Tensor("OUTPUT__0", "TYPE_FP32", (2,)),),
    max_batch_size=4,
)


def export(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.pt").write_bytes(b"torchscript bytes")
    (directory / "config.pbtxt").write_text(triton_config.render(EXPORTED))
    return directory


def args(source: str, repository: Path, *extra: str) -> list[str]:
    return [
        f"--source={source}", f"--model-repository={repository}", "--name=served", "--format=pytorch_libtorch",
        "--max-batch-size=16", "--instance-count=2", "--instance-kind=KIND_CPU", *extra,
    ]  # fmt: skip


def staged_config(repository: Path) -> triton_config.ModelConfig:
    return triton_config.from_protobuf(triton_config.parse((repository / "served" / "config.pbtxt").read_text()))


def test_directory_export_is_staged_with_the_spec_settings_applied(tmp_path: Path) -> None:
    source = export(tmp_path / "export")
    repository = tmp_path / "models"
    extra = ("--dynamic-batching", "--preferred-batch-sizes=4,8", "--max-queue-delay-microseconds=100")
    assert stage_model.main(args(str(source), repository, *extra)) == 0
    assert (repository / "served" / "1" / "model.pt").read_bytes() == b"torchscript bytes"
    config = staged_config(repository)
    assert (config.name, config.max_batch_size, config.instance_count, config.instance_kind) == ("served", 16, 2, "KIND_CPU")
    assert config.dynamic_batching and tuple(config.preferred_batch_sizes) == (4, 8)
    assert config.inputs == EXPORTED.inputs and config.outputs == EXPORTED.outputs


def test_operator_config_wins_over_the_exported_one(tmp_path: Path) -> None:
    source = export(tmp_path / "export")
    operator_config = tmp_path / "config.pbtxt"
    tensors = (triton_config.Tensor("INPUT__0", "TYPE_FP16", (8,)),)
    operator_config.write_text(triton_config.render(triton_config.ModelConfig(
        name="served", format="pytorch_libtorch", inputs=tensors, outputs=EXPORTED.outputs, max_batch_size=16,
    )))  # fmt: skip
    assert stage_model.main(args(str(source), tmp_path / "models", f"--config={operator_config}")) == 0
    assert staged_config(tmp_path / "models").inputs == tensors


def test_nested_export_layout_is_found(tmp_path: Path) -> None:
    export(tmp_path / "export" / "model" / "1")
    assert stage_model.main(args(str(tmp_path / "export"), tmp_path / "models")) == 0
    assert (tmp_path / "models" / "served" / "1" / "model.pt").is_file()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def test_http_directory_is_fetched(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    export(root / "resnet")
    assert stage_model.main(args(f"{base}/resnet/", tmp_path / "models")) == 0
    assert (tmp_path / "models" / "served" / "1" / "model.pt").read_bytes() == b"torchscript bytes"
    assert staged_config(tmp_path / "models").max_batch_size == 16


def test_bad_sources_fail_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert stage_model.main(args("s3://bucket/model", tmp_path / "models")) == 1
    assert "only a mounted directory or an http(s) URI" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert stage_model.main(args(str(tmp_path / "empty"), tmp_path / "models")) == 1
    assert "no model.pt" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.pt").write_bytes(b"x")
    assert stage_model.main(args(str(tmp_path / "bare"), tmp_path / "models")) == 1
    assert "no config.pbtxt" in capsys.readouterr().err
