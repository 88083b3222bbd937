"""Staging a Triton model repository from a directory or an http(s) URI (s3: test_stage_model_s3.py).

The http tests serve a directory with the standard library's ``http.server``
(what ``python -m http.server`` runs: a real directory index) and run the
stager as the init container does, as a subprocess with its own environment.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from lepton_workloads import export as export_module
from lepton_workloads import stage_model, triton_config
from lepton_workloads.triton_simulator import Model
from sample_data import export_model, run_stager

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


def args(source: str, repository: Path, *extra: str, model_format: str = "pytorch_libtorch") -> list[str]:
    return [
        f"--source={source}", f"--model-repository={repository}", "--name=served", f"--format={model_format}",
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


def test_an_onnx_export_is_staged_and_served_as_the_trainer_wrote_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    exported = export_module.write(torch.nn.Linear(4, 2), (4,), tmp_path / "export", "resnet", 4, "onnx")
    repository = tmp_path / "models"
    assert stage_model.main(args(str(tmp_path / "export"), repository, "--dynamic-batching", model_format="onnxruntime")) == 0
    staged = repository / "served" / "1" / "model.onnx"
    assert staged.read_bytes() == (exported / "1" / "model.onnx").read_bytes()
    config = staged_config(repository)
    assert (config.format, config.max_batch_size, config.dynamic_batching) == ("onnxruntime", 16, True)
    assert 'platform: "onnxruntime_onnx"' in (repository / "served" / "config.pbtxt").read_text()
    served = Model(repository, "served", service_time=0, concurrency=1)  # checks the config against the graph
    batch = np.arange(12, dtype=np.float32).reshape(3, 4)
    (expected,) = onnxruntime.InferenceSession(str(staged)).run(None, {"INPUT__0": batch})
    assert np.array_equal(served.infer({"INPUT__0": batch})["OUTPUT__0"], expected)


def test_an_export_in_another_format_than_the_services_is_not_found(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    export_module.write(torch.nn.Linear(4, 2), (4,), tmp_path / "export", "resnet", 4, "onnx")
    assert stage_model.main(args(str(tmp_path / "export"), tmp_path / "models", model_format="pytorch_libtorch")) == 1
    assert f"ModelNotFound: no model.pt under {tmp_path / 'export'}" in capsys.readouterr().err


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


def test_exported_model_directory_is_fetched_over_http(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    exported = export_model(root / "exports", "resnet")  # resnet/config.pbtxt, resnet/1/model.pt
    run = run_stager(tmp_path, f"{base}/exports/")
    assert run.code == 0, run.stderr
    staged = run.repository / "served" / "1" / "model.pt"
    assert staged.read_bytes() == (exported / "1" / "model.pt").read_bytes()
    assert torch.jit.load(str(staged))(torch.ones(1, 4)).shape == (1, 2)  # a real TorchScript module
    config = staged_config(run.repository)
    assert (config.name, config.max_batch_size, config.instance_count) == ("served", 16, 2)
    assert config.inputs == (triton_config.Tensor("INPUT__0", "TYPE_FP32", (4,)),)
    assert sorted(p.name for p in run.repository.iterdir()) == ["served"]  # the fetch directory is gone


def test_single_model_file_over_http_takes_the_config_one_level_up(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    exported = export_model(root, "resnet")
    run = run_stager(tmp_path, f"{base}/resnet/1/model.pt")
    assert run.code == 0, run.stderr
    assert (run.repository / "served" / "1" / "model.pt").read_bytes() == (exported / "1" / "model.pt").read_bytes()
    assert staged_config(run.repository).outputs == (triton_config.Tensor("OUTPUT__0", "TYPE_FP32", (2,)),)


def test_http_failures_are_one_line_with_a_reason(http_root: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_root
    (root / "bare").mkdir(parents=True)
    (root / "bare" / "model.pt").write_bytes(b"x")
    missing = run_stager(tmp_path / "missing", f"{base}/nothing/model.pt")
    assert missing.code == 1
    assert missing.termination.startswith("SourceUnreachable: GET ") and "HTTP 404" in missing.termination
    assert missing.stderr.strip() == f"stage_model: {missing.termination}"
    bare = run_stager(tmp_path / "bare", f"{base}/bare/model.pt")
    assert bare.code == 1 and bare.termination.startswith("ConfigNotFound: ")
    assert f"SourceUnreachable: GET {base}/bare/config.pbtxt: HTTP 404" in bare.termination
    assert "\n" not in bare.termination


@pytest.mark.parametrize(
    ("uri", "fetched", "configs"),
    [
        ("s3://models/exports/", "s3://models/exports/", ()),
        ("s3://models/exports", "s3://models/exports/", ()),
        ("s3://models", "s3://models", ()),
        ("https://host/model.tar.gz", "https://host/model.tar.gz", ()),
        ("s3://models/resnet/1/model.pt", "s3://models/resnet/1/model.pt",
         ("s3://models/resnet/1/config.pbtxt", "s3://models/resnet/config.pbtxt")),
        ("https://host/m/resnet.pt?sig=1", "https://host/m/resnet.pt?sig=1",
         ("https://host/m/config.pbtxt", "https://host/config.pbtxt")),
        ("s3://models/model.pt", "s3://models/model.pt", ("s3://models/config.pbtxt",)),
    ],
)
def test_remote_layout(uri: str, fetched: str, configs: tuple[str, ...]) -> None:
    assert stage_model.remote_layout(uri, "model.pt") == (fetched, configs)


def test_bad_sources_fail_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "termination-log"
    assert stage_model.main(args("ftp://host/model", tmp_path / "models", f"--termination-log={log}")) == 1
    assert log.read_text().startswith("UnsupportedSource: ftp://host/model: the model source must be")
    assert capsys.readouterr().err == f"stage_model: {log.read_text()}\n"
    (tmp_path / "empty").mkdir()
    assert stage_model.main(args(str(tmp_path / "empty"), tmp_path / "models")) == 1
    assert "ModelNotFound: no model.pt" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.pt").write_bytes(b"x")
    assert stage_model.main(args(str(tmp_path / "bare"), tmp_path / "models")) == 1
    assert "ConfigNotFound: the spec names no tensors" in capsys.readouterr().err
    (tmp_path / "bare" / "config.pbtxt").write_text("not a config {")
    assert stage_model.main(args(str(tmp_path / "bare"), tmp_path / "models")) == 1
    assert "InvalidModelConfig: config.pbtxt does not parse" in capsys.readouterr().err
