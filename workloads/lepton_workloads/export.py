"""Model export: a trained module becomes one entry of a Triton model repository.

``<output>/<name>/1/model.pt`` or ``model.onnx``, and ``<output>/<name>/config.pbtxt``,
the layout Triton loads and :mod:`lepton_workloads.stage_model` stages. The format is
the TrainingJob's ``spec.output.format`` (``LEPTON_OUTPUT_FORMAT``), see :data:`FORMATS`:

* ``torchscript``: :func:`torch.jit.trace`, served by Triton's ``pytorch_libtorch``
  backend. A TorchScript file carries no tensor names or shapes, so the config
  takes them from the example run: ``INPUT__0``/``OUTPUT__0`` (that backend's
  naming convention), the example's shapes.
* ``onnx``: :func:`torch.onnx.export` with the ``torch.export``-based exporter
  (``dynamo=True``; the default since torch 2.9, the TorchScript-based one is
  deprecated), which needs the ``onnx`` and ``onnxscript`` packages and no
  network. The batch axis is dynamic (``torch.export.Dim``), the weights are
  inside the file (no external data: a model must stay under protobuf's 2 GB),
  and the tensors keep the names ``INPUT__0``/``OUTPUT__0``, so a client is the
  same for either format. The saved file is checked with ``onnx.checker``
  (shape inference included), and the config is *read back from the saved
  graph* (:func:`onnx_tensors`: names, element types, dims; a symbolic dim is
  ``-1``), so config and model cannot disagree. Triton's ``onnxruntime_onnx``
  platform refuses a config that does not match the graph; the Triton
  simulator checks the same (:func:`config_mismatches`).

Either way the config is rendered by :mod:`lepton_workloads.triton_config` (Triton's
own ``ModelConfig`` schema). With ``max_batch_size > 0`` Triton owns the leading batch
dimension, so the config's dims leave it out (:func:`triton_dims`); with 0 they are the
graph's whole shape. Files are published with :func:`lepton_workloads.durable.replace`
(written under a temporary name, synced, renamed, the rename synced), model first, so a
``config.pbtxt`` is only ever next to a whole model, after a node crash too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from lepton_workloads import durable, triton_config
from lepton_workloads.triton_config import Tensor

#: Export format (TrainingJob ``spec.output.format``) -> Triton model format (InferenceService ``model.format``).
FORMATS: dict[str, str] = {"torchscript": "pytorch_libtorch", "onnx": "onnxruntime"}
INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"
#: Examples have two rows: ``torch.export`` specialises a dynamic dimension it sees as 1.
EXAMPLE_BATCH = 2
#: ONNX element type names whose Triton name is not ``TYPE_<name>``.
ONNX_TYPES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "BFLOAT16": "TYPE_BF16"}

Signature = tuple[tuple[Tensor, ...], tuple[Tensor, ...]]
"""A model's (inputs, outputs) as a Triton config states them."""


def triton_dims(dims: Sequence[int], max_batch_size: int) -> tuple[int, ...]:
    """A graph's dims (batch first, ``-1`` where symbolic) as the config states them."""
    if max_batch_size == 0:
        return tuple(dims)
    if not dims or dims[0] != -1:
        raise ValueError(f"max_batch_size {max_batch_size} needs a dynamic leading batch dimension; the graph has {list(dims)}")
    return tuple(dims[1:])


def _onnx_tensor(value: onnx.ValueInfoProto, max_batch_size: int) -> Tensor:
    tensor_type = value.type.tensor_type
    element = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
    dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
    return Tensor(value.name, ONNX_TYPES.get(element, f"TYPE_{element}"), triton_dims(dims, max_batch_size))


def onnx_tensors(model: onnx.ModelProto, max_batch_size: int) -> Signature:
    """The graph's (inputs, outputs) as Triton config tensors; weights (initializers) are not inputs."""
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = tuple(_onnx_tensor(value, max_batch_size) for value in model.graph.input if value.name not in weights)
    return inputs, tuple(_onnx_tensor(value, max_batch_size) for value in model.graph.output)


def config_mismatches(config: triton_config.ModelConfig, model: onnx.ModelProto) -> list[str]:
    """How ``config`` disagrees with the ONNX graph, as Triton's onnxruntime backend would refuse it."""
    try:
        inputs, outputs = onnx_tensors(model, config.max_batch_size)
    except ValueError as error:
        return [str(error)]
    problems = []
    for kind, stated, actual in (("input", config.inputs, inputs), ("output", config.outputs, outputs)):
        graph = {tensor.name: tensor for tensor in actual}
        if {tensor.name for tensor in stated} != set(graph):
            problems.append(f"{kind}s {sorted(t.name for t in stated)} are not the graph's {sorted(graph)}")
            continue
        for tensor in stated:
            found = graph[tensor.name]
            fits = len(found.dims) == len(tensor.dims) and all(g in (-1, d) for g, d in zip(found.dims, tensor.dims, strict=True))
            if found.data_type != tensor.data_type or not fits:
                problems.append(f"{kind} {tensor.name}: config says {tensor.data_type} {list(tensor.dims)},"
                                f" the graph has {found.data_type} {list(found.dims)}")  # fmt: skip
    return problems


def torchscript(model: nn.Module, example: torch.Tensor, path: Path, max_batch_size: int) -> Signature:
    """Trace ``model`` into ``path``; its tensors, shaped like the example's."""
    with torch.no_grad():
        traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
        result = model(example)
    durable.replace(path, lambda temporary: traced.save(str(temporary)))
    inputs = (Tensor(INPUT, "TYPE_FP32", triton_dims((-1, *example.shape[1:]), max_batch_size)),)
    outputs = (Tensor(OUTPUT, "TYPE_FP32", triton_dims((-1, *result.shape[1:]), max_batch_size)),)
    return inputs, outputs


def onnx_export(model: nn.Module, example: torch.Tensor, path: Path, max_batch_size: int) -> Signature:
    """Export ``model`` to ONNX at ``path`` with a dynamic batch axis; its tensors, read back from the graph."""
    batch = torch.export.Dim("batch", min=1)

    def save(temporary: Path) -> None:
        program = torch.onnx.export(model, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)  # fmt: skip
        assert program is not None  # dynamo=True always returns the program
        program.save(temporary, external_data=False)
        onnx.checker.check_model(str(temporary), full_check=True)

    durable.replace(path, save)
    return onnx_tensors(onnx.load(str(path)), max_batch_size)


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, int], Signature]] = {
    "torchscript": torchscript,
    "onnx": onnx_export,
}


def write(model: nn.Module, shape: Sequence[int], output_dir: Path, name: str, max_batch_size: int,
          export_format: str = "torchscript") -> Path:  # fmt: skip
    """Export ``model`` (inputs of ``shape`` per sample) under ``output_dir/name``; returns that directory."""
    if export_format not in EXPORTERS:
        raise ValueError(f"export format {export_format!r} is not one of {sorted(EXPORTERS)}")
    model = model.cpu().eval()
    version = output_dir / name / "1"
    durable.make_directories(version)
    example = torch.zeros(EXAMPLE_BATCH, *shape)
    model_file = version / triton_config.model_file(FORMATS[export_format])
    inputs, outputs = EXPORTERS[export_format](model, example, model_file, max_batch_size)
    text = triton_config.render(triton_config.ModelConfig(name, FORMATS[export_format], inputs, outputs, max_batch_size))
    durable.write_text(output_dir / name / "config.pbtxt", text)
    return output_dir / name
