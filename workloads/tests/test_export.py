"""Exports as Triton loads them: ONNX run in ONNX Runtime against the torch model, configs read back from the graph."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from lepton_workloads import export, train, triton_config
from lepton_workloads.triton_config import Tensor
from sync_recorder import record_syncs


def session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def read_config(directory: Path) -> triton_config.ModelConfig:
    return triton_config.from_protobuf(triton_config.parse((directory / "config.pbtxt").read_text()))


@pytest.mark.parametrize(("kind", "shape"), [("mlp", (8,)), ("cnn", (3, 8, 8))])
def test_onnx_export_computes_what_the_torch_model_does_at_any_batch_size(tmp_path: Path, kind: str,
                                                                          shape: tuple[int, ...]) -> None:  # fmt: skip
    torch.manual_seed(0)
    model = train.build_model(kind, shape, 16, 3)
    directory = export.write(model, shape, tmp_path, "net", max_batch_size=8, export_format="onnx")

    assert sorted(path.name for path in (directory / "1").iterdir()) == ["model.onnx"]  # no .tmp left, no model.pt
    onnx.checker.check_model(str(directory / "1" / "model.onnx"), full_check=True)
    runtime = session(directory / "1" / "model.onnx")
    for batch in (1, 5):  # the exporter saw 2 rows: the batch axis is dynamic
        inputs = np.random.default_rng(batch).normal(size=(batch, *shape)).astype(np.float32)
        (outputs,) = runtime.run(["OUTPUT__0"], {"INPUT__0": inputs})
        with torch.no_grad():
            expected = model(torch.from_numpy(inputs)).numpy()
        assert outputs.shape == (batch, 3)
        np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)

    config = read_config(directory)
    assert (config.name, config.format, config.max_batch_size) == ("net", "onnxruntime", 8)
    assert 'platform: "onnxruntime_onnx"' in (directory / "config.pbtxt").read_text()
    assert config.inputs == (Tensor("INPUT__0", "TYPE_FP32", shape),)
    assert config.outputs == (Tensor("OUTPUT__0", "TYPE_FP32", (3,)),)
    assert [(i.name, i.type, i.shape[1:]) for i in runtime.get_inputs()] == [("INPUT__0", "tensor(float)", list(shape))]
    assert export.config_mismatches(config, onnx.load(str(directory / "1" / "model.onnx"))) == []


@pytest.mark.parametrize("export_format", ["torchscript", "onnx"])
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_without_batching_the_config_states_the_graphs_whole_shape(tmp_path: Path, export_format: str) -> None:
    directory = export.write(torch.nn.Linear(4, 2), (4,), tmp_path, "lin", max_batch_size=0, export_format=export_format)
    config = read_config(directory)
    assert config.max_batch_size == 0
    assert config.inputs[0].dims == (-1, 4) and config.outputs[0].dims == (-1, 2)
    if export_format == "onnx":
        assert export.config_mismatches(config, onnx.load(str(directory / "1" / "model.onnx"))) == []


def test_torchscript_export_keeps_the_backend_names_and_the_example_shapes(tmp_path: Path) -> None:
    directory = export.write(train.build_model("cnn", (1, 8, 8), 16, 3), (1, 8, 8), tmp_path, "img", max_batch_size=4)
    assert sorted(path.name for path in (directory / "1").iterdir()) == ["model.pt"]
    config = read_config(directory)
    assert config.format == "pytorch_libtorch"
    assert config.inputs == (Tensor("INPUT__0", "TYPE_FP32", (1, 8, 8)),)
    assert config.outputs == (Tensor("OUTPUT__0", "TYPE_FP32", (3,)),)


def test_the_model_and_then_its_config_are_each_synced_renamed_and_the_rename_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a node crash a config.pbtxt is never next to an empty or missing model file."""
    happened = record_syncs(monkeypatch, tmp_path)
    export.write(torch.nn.Linear(4, 2), (4,), tmp_path, "lin", max_batch_size=4)
    assert happened == [
        ("sync", "."), ("sync", "lin"),  # the new directories lin/ and lin/1/ are in their parents
        ("sync", "lin/1/.model.pt.tmp"), ("rename", "model.pt"), ("sync", "lin/1"),
        ("sync", "lin/.config.pbtxt.tmp"), ("rename", "config.pbtxt"), ("sync", "lin"),
    ]  # fmt: skip


def test_a_failing_export_leaves_the_previous_model_and_no_temporary(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    export.write(torch.nn.Linear(4, 2), (4,), tmp_path, "lin", max_batch_size=4)
    before = {p: p.read_bytes() for p in (tmp_path / "lin").rglob("*") if p.is_file()}

    def save_half(module: object, path: str, **kwargs: object) -> None:
        Path(path).write_bytes(b"PK half a model")
        raise RuntimeError("disk gone")

    monkeypatch.setattr(torch.jit.ScriptModule, "save", save_half)
    with pytest.raises(RuntimeError, match="disk gone"):
        export.write(torch.nn.Linear(4, 2), (4,), tmp_path, "lin", max_batch_size=4)
    assert {p: p.read_bytes() for p in (tmp_path / "lin").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in before) == ["config.pbtxt", "model.pt"]


def test_an_unknown_format_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not one of"):
        export.write(torch.nn.Linear(4, 2), (4,), tmp_path, "lin", max_batch_size=4, export_format="savedmodel")
    assert not (tmp_path / "lin").exists()


def graph(batch: str | int, element: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """``y = relu(x)`` over ``[batch, 4]``, with a weight initializer that is not an input."""
    x = helper.make_tensor_value_info("x", element, [batch, 4])
    y = helper.make_tensor_value_info("y", element, [batch, 4])
    weight = helper.make_tensor("w", element, [4], [1.0, 1.0, 1.0, 1.0])
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Relu", ["xw"], ["y"])]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [weight]))


def test_onnx_tensors_map_names_types_and_symbolic_dims() -> None:
    assert export.onnx_tensors(graph("batch"), 8) == ((Tensor("x", "TYPE_FP32", (4,)),), (Tensor("y", "TYPE_FP32", (4,)),))
    assert export.onnx_tensors(graph("batch"), 0)[0] == (Tensor("x", "TYPE_FP32", (-1, 4)),)
    assert export.onnx_tensors(graph(3, TensorProto.FLOAT16), 0)[1] == (Tensor("y", "TYPE_FP16", (3, 4)),)
    assert export.onnx_tensors(graph("n", TensorProto.INT64), 4)[0] == (Tensor("x", "TYPE_INT64", (4,)),)


def config(inputs: tuple[Tensor, ...], max_batch_size: int = 8, output_dims: tuple[int, ...] = (4,)) -> triton_config.ModelConfig:
    return triton_config.ModelConfig("m", "onnxruntime", inputs, (Tensor("y", "TYPE_FP32", output_dims),), max_batch_size)


@pytest.mark.parametrize(
    ("model", "stated", "problem"),
    [
        (graph("batch"), config((Tensor("x", "TYPE_FP32", (4,)),)), None),
        (graph("batch"), config((Tensor("input", "TYPE_FP32", (4,)),)), r"inputs \['input'\] are not the graph's \['x'\]"),
        (graph("batch"), config((Tensor("x", "TYPE_FP16", (4,)),)), "input x: config says TYPE_FP16"),
        (graph("batch"), config((Tensor("x", "TYPE_FP32", (5,)),)), r"the graph has TYPE_FP32 \[4\]"),
        (graph("batch"), config((Tensor("x", "TYPE_FP32", (2, 2)),)), "input x"),
        (graph(1), config((Tensor("x", "TYPE_FP32", (4,)),)), "needs a dynamic leading batch dimension"),
        (graph(1), config((Tensor("x", "TYPE_FP32", (1, 4)),), 0, (1, 4)), None),
        (graph("batch"), config((Tensor("x", "TYPE_FP32", (3, 4)),), 0, (-1, 4)), None),  # -1 in the graph takes any size
    ],
)
def test_config_mismatches_are_what_tritons_onnx_backend_refuses(model: onnx.ModelProto,
                                                                 stated: triton_config.ModelConfig,
                                                                 problem: str | None) -> None:  # fmt: skip
    found = export.config_mismatches(stated, model)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and re.search(problem, found[0]), found
