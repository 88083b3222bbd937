"""Triton model configuration (``config.pbtxt``): the one generator, validated by Triton's own schema.

Both sides of the platform write Triton configs: the trainer next to the model
it exports, and the operator when it stages a model repository for an
InferenceService. They share this module so the two can never disagree. A
config is built as Triton's ``ModelConfig`` protobuf (shipped in
``tritonclient``) and printed in protobuf text format, which is what Triton
reads; :func:`parse` reads it back through the same schema, so a field Triton
does not know is an error here, not at server start. Pure: no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

#: API model format -> (Triton platform, file name inside ``<model>/<version>/``).
FORMATS: dict[str, tuple[str, str]] = {
    "pytorch_libtorch": ("pytorch_libtorch", "model.pt"),
    "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
}
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")


@dataclass(frozen=True)
class Tensor:
    """One input or output: name, Triton data type (``TYPE_FP32``...), shape without the batch dim."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelConfig:
    """What Lepton sets in a Triton model config."""

    name: str
    format: str
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    max_batch_size: int = 0
    instance_count: int = 1
    instance_kind: str = "KIND_AUTO"
    dynamic_batching: bool = False
    preferred_batch_sizes: Sequence[int] = field(default_factory=tuple)
    max_queue_delay_microseconds: int = 0


def model_file(model_format: str) -> str:
    """The file Triton loads for ``model_format`` (``model.pt``, ``model.onnx``)."""
    return FORMATS[model_format][1]


def _tensor(message: Any, tensor: Tensor) -> None:
    message.name = tensor.name
    message.data_type = mc.DataType.Value(tensor.data_type)
    message.dims.extend(tensor.dims)


def to_protobuf(config: ModelConfig) -> Any:
    """The ``inference.ModelConfig`` message for ``config``; raises ``ValueError`` when it cannot be one."""
    problems = check(config)
    if problems:
        raise ValueError("; ".join(problems))
    message = mc.ModelConfig()
    message.name = config.name
    message.platform = FORMATS[config.format][0]
    message.max_batch_size = config.max_batch_size
    for tensor in config.inputs:
        _tensor(message.input.add(), tensor)
    for tensor in config.outputs:
        _tensor(message.output.add(), tensor)
    group = message.instance_group.add()
    group.count = config.instance_count
    group.kind = mc.ModelInstanceGroup.Kind.Value(config.instance_kind)
    if config.dynamic_batching:
        message.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
        message.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_microseconds
    return message


def render(config: ModelConfig) -> str:
    """``config.pbtxt`` text for ``config``."""
    text: str = text_format.MessageToString(to_protobuf(config))
    return text


def parse(text: str) -> Any:
    """Read a ``config.pbtxt`` through Triton's schema; ``ValueError`` names what is wrong."""
    message = mc.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(f"config.pbtxt does not parse as Triton's ModelConfig: {error}") from error
    return message


def check(config: ModelConfig) -> list[str]:
    """Problems Triton would refuse the model for (empty when none)."""
    problems = []
    if not config.name:
        problems.append("the model needs a name")
    if config.format not in FORMATS:
        problems.append(f"format {config.format!r} is not one of {sorted(FORMATS)}")
    if not config.inputs or not config.outputs:
        problems.append("the model needs at least one input and one output tensor")
    for tensor in (*config.inputs, *config.outputs):
        if tensor.data_type not in mc.DataType.keys():
            problems.append(f"tensor {tensor.name}: unknown data type {tensor.data_type}")
        if not tensor.dims or any(dim < -1 or dim == 0 for dim in tensor.dims):
            problems.append(f"tensor {tensor.name}: dims must be positive or -1, got {list(tensor.dims)}")
    names = [tensor.name for tensor in (*config.inputs, *config.outputs)]
    if len(set(names)) != len(names):
        problems.append("tensor names must be unique")
    if config.max_batch_size < 0:
        problems.append("max_batch_size must be >= 0")
    if config.dynamic_batching and config.max_batch_size == 0:
        problems.append("dynamic batching needs max_batch_size > 0")
    if any(size > config.max_batch_size for size in config.preferred_batch_sizes):
        problems.append("preferred batch sizes must not exceed max_batch_size")
    if config.instance_count < 1:
        problems.append("instance count must be >= 1")
    if config.instance_kind not in INSTANCE_KINDS:
        problems.append(f"instance kind must be one of {INSTANCE_KINDS}")
    return problems


def from_protobuf(message: Any) -> ModelConfig:
    """Back from Triton's message (e.g. a trainer-written config the operator reuses)."""
    platform_to_format = {platform: name for name, (platform, _) in FORMATS.items()}

    def tensors(items: Any) -> tuple[Tensor, ...]:
        return tuple(Tensor(t.name, mc.DataType.Name(t.data_type), tuple(t.dims)) for t in items)

    group = message.instance_group[0] if message.instance_group else None
    batching = message.HasField("dynamic_batching")
    return ModelConfig(
        name=message.name,
        format=platform_to_format.get(message.platform, message.platform),
        inputs=tensors(message.input),
        outputs=tensors(message.output),
        max_batch_size=message.max_batch_size,
        instance_count=group.count if group else 1,
        instance_kind=mc.ModelInstanceGroup.Kind.Name(group.kind) if group else "KIND_AUTO",
        dynamic_batching=batching,
        preferred_batch_sizes=tuple(message.dynamic_batching.preferred_batch_size) if batching else (),
        max_queue_delay_microseconds=message.dynamic_batching.max_queue_delay_microseconds if batching else 0,
    )
