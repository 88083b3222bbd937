"""The Triton simulator's core, shared by its HTTP and gRPC front ends: the model, its scheduling, its counters, its errors.

A :class:`Model` loads one model of a Triton model repository by the platform
of its ``config.pbtxt`` (read with ``triton_config``; :data:`RUNNERS`):
``pytorch_libtorch`` loads ``<m>/1/model.pt`` with torch and passes the inputs
in the config's order; ``onnxruntime_onnx`` runs ``<m>/1/model.onnx`` in ONNX
Runtime (CPU, one thread) by tensor name, after checking the config against the
graph as Triton's onnxruntime backend does (a mismatch is an error at load).

Both front ends decode a request into numpy arrays in their own wire format and
hand them to :meth:`Model.infer`, which validates them against the config,
queues for one of ``concurrency`` instances, executes (at least
``service_time``) and counts as Triton does (:class:`Stats`, rendered with
Triton's metric names). So the two protocols share one queue and one set of
counters, as Triton's do.

Errors are :class:`TritonError`: a ``TRITONSERVER_Error`` code and Triton's
message; each front end maps the code as Triton does (:data:`HTTP_STATUS` from
``HttpCodeFromError`` in Triton's ``src/http_server.cc``, :data:`GRPC_STATUS`
from ``GrpcStatusUtil::CodeToStatus`` in ``src/grpc/grpc_utils.cc``). The texts
for an unknown model and for model control come from triton-inference-server/core
(``model_repository_manager.cc``, ``model_lifecycle.cc``): the simulator runs in
Triton's default model control mode, ``none``, where loading and unloading are
refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from lepton_workloads import export, triton_config

VERSION = "1"
#: Triton data type -> numpy dtype name, for the types a TorchScript model sees.
NUMPY_TYPES = {
    "TYPE_BOOL": "bool", "TYPE_UINT8": "uint8", "TYPE_INT8": "int8", "TYPE_INT16": "int16",
    "TYPE_INT32": "int32", "TYPE_INT64": "int64", "TYPE_FP16": "float16", "TYPE_FP32": "float32",
    "TYPE_FP64": "float64",
}  # fmt: skip
COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)"),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds"),
)
#: ``TRITONSERVER_Error`` code -> HTTP status (``HttpCodeFromError``; any other code is 400).
HTTP_STATUS = {"INTERNAL": 500, "NOT_FOUND": 404, "UNAVAILABLE": 503, "UNSUPPORTED": 501}
#: ``TRITONSERVER_Error`` code -> gRPC status code name (``GrpcStatusUtil::CodeToStatus``).
GRPC_STATUS = {
    "UNKNOWN": "UNKNOWN", "INTERNAL": "INTERNAL", "NOT_FOUND": "NOT_FOUND", "INVALID_ARG": "INVALID_ARGUMENT",
    "UNAVAILABLE": "UNAVAILABLE", "UNSUPPORTED": "UNIMPLEMENTED", "ALREADY_EXISTS": "ALREADY_EXISTS",
    "CANCELLED": "CANCELLED",
}  # fmt: skip
#: What Triton answers a load or unload in model control mode ``none``.
MODEL_CONTROL_DISABLED = "explicit model load / unload is not allowed if polling is enabled"


class TritonError(Exception):
    """An error as Triton's core reports it: ``code`` (``INVALID_ARG``, ``UNAVAILABLE``...) and Triton's message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)

    @property
    def grpc_status(self) -> str:
        return GRPC_STATUS.get(self.code, "UNKNOWN")


def wire_type(data_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32`` (the v2 protocol's names)."""
    return data_type.removeprefix("TYPE_")


@dataclass
class Stats:
    """Triton's per-model counters and the pending gauge, updated under one lock."""

    counters: dict[str, float] = field(default_factory=lambda: {name: 0.0 for name, _ in COUNTERS})
    pending: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_failure(self) -> None:
        with self.lock:
            self.counters["nv_inference_request_failure"] += 1

    def render(self, model: str) -> str:
        labels = f'{{model="{model}",version="{VERSION}"}}'
        with self.lock:
            lines = []
            for name, text in COUNTERS:
                lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name}{labels} {self.counters[name]:.0f}"]
            lines += [
                "# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting"
                " execution per-model.",
                "# TYPE nv_inference_pending_request_count gauge",
                f"nv_inference_pending_request_count{labels} {self.pending}",
            ]
        return "\n".join(lines) + "\n"


Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""One execution: input tensors by name -> output tensors by name."""


def torchscript_runner(path: Path, config: triton_config.ModelConfig) -> Run:
    module = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    module.eval()

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            result = module(*(torch.from_numpy(inputs[t.name]) for t in config.inputs))
        results = result if isinstance(result, tuple | list) else (result,)
        return {t.name: r.numpy() for t, r in zip(config.outputs, results, strict=True)}

    return run


def onnx_runner(path: Path, config: triton_config.ModelConfig) -> Run:
    problems = export.config_mismatches(config, onnx.load(str(path)))
    if problems:
        raise ValueError(f"{path.name} does not match config.pbtxt: {'; '.join(problems)}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [t.name for t in config.outputs]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = session.run(names, {t.name: inputs[t.name] for t in config.inputs})
        return dict(zip(names, results, strict=True))

    return run


#: Model format (``triton_config.FORMATS``) -> how its model file is loaded and run.
RUNNERS: dict[str, Callable[[Path, triton_config.ModelConfig], Run]] = {
    "pytorch_libtorch": torchscript_runner,
    "onnxruntime": onnx_runner,
}


def check_shape(tensor: triton_config.Tensor, shape: Sequence[int], max_batch_size: int) -> None:
    """Refuse a shape the model config does not allow, as Triton does."""
    dims = list(shape[1:]) if max_batch_size > 0 else list(shape)
    if max_batch_size > 0 and not 1 <= shape[0] <= max_batch_size:
        raise ValueError(f"{tensor.name}: batch size {shape[0]} is not in 1..{max_batch_size}")
    if len(dims) != len(tensor.dims) or any(want not in (-1, got) for want, got in zip(tensor.dims, dims, strict=True)):
        raise ValueError(f"{tensor.name}: unexpected shape {list(shape)}, model expects {list(tensor.dims)}")


class Model:
    """One TorchScript or ONNX model served with ``concurrency`` instances."""

    def __init__(self, repository: Path, name: str, service_time: float, concurrency: int) -> None:
        directory = repository / name
        self.name = name
        #: Triton's ``inference.ModelConfig`` message, as read from ``config.pbtxt`` (the gRPC ModelConfig answer).
        self.config_message = triton_config.parse((directory / "config.pbtxt").read_text())
        self.config = triton_config.from_protobuf(self.config_message)
        if self.config.format not in RUNNERS:
            raise ValueError(f"{name}: the simulator runs {sorted(RUNNERS)} models, not {self.config.format!r}")
        self.run = RUNNERS[self.config.format](directory / VERSION / triton_config.model_file(self.config.format), self.config)
        self.service_time = service_time
        self.slots = threading.Semaphore(concurrency)
        self.stats = Stats()

    def check(self, name: str, version: str = "") -> None:
        """Raise Triton's error unless ``name`` (and ``version``, when given) is this model."""
        if name != self.name:
            raise TritonError("INVALID_ARG", f"Request for unknown model: '{name}' is not found")
        if version not in ("", VERSION):
            raise TritonError("NOT_FOUND", f"Request for unknown model: '{name}' version {version} is not found")

    def input_dtype(self, name: str, wire_datatype: str) -> np.dtype[Any]:
        """The numpy type of input ``name``: the config's, else the request's (the check refuses it later)."""
        types = {t.name: t.data_type for t in self.config.inputs}
        return np.dtype(NUMPY_TYPES[types.get(name, "TYPE_" + wire_datatype)])

    def output_datatype(self, name: str) -> str:
        """The wire type (``FP32``...) of output ``name``."""
        return next(wire_type(t.data_type) for t in self.config.outputs if t.name == name)

    def metadata(self) -> dict[str, Any]:
        """The model metadata, as the HTTP endpoint answers it (the gRPC message has the same fields)."""

        def tensors(items: Sequence[triton_config.Tensor]) -> list[dict[str, Any]]:
            batch = [-1] if self.config.max_batch_size > 0 else []
            return [{"name": t.name, "datatype": wire_type(t.data_type), "shape": [*batch, *t.dims]} for t in items]

        return {"name": self.name, "versions": [VERSION], "platform": triton_config.FORMATS[self.config.format][0],
                "inputs": tensors(self.config.inputs), "outputs": tensors(self.config.outputs)}  # fmt: skip

    def repository_index(self) -> list[dict[str, str]]:
        """The repository index: the one model, loaded."""
        return [{"name": self.name, "version": VERSION, "state": "READY"}]

    def _validate(self, inputs: Mapping[str, np.ndarray]) -> None:
        known = {t.name: t for t in self.config.inputs}
        for name, array in inputs.items():
            if name not in known:
                raise ValueError(f"unknown input {name}")
            check_shape(known[name], array.shape, self.config.max_batch_size)
        missing = set(known) - set(inputs)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}")

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate, queue for an instance, execute (at least ``service_time``), count as Triton does.

        A failure counts in ``nv_inference_request_failure`` and raises
        :class:`TritonError` (``INVALID_ARG``, Triton's code for a bad request).
        """
        try:
            self._validate(inputs)
            return self._execute(inputs)
        except Exception as error:
            self.stats.count_failure()
            raise TritonError("INVALID_ARG", f"{type(error).__name__}: {error}") from error

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrived = time.perf_counter()
        with self.stats.lock:
            self.stats.pending += 1
        with self.slots:
            started = time.perf_counter()
            with self.stats.lock:
                self.stats.pending -= 1
            outputs = self.run(inputs)
            remaining = self.service_time - (time.perf_counter() - started)
            if remaining > 0:
                time.sleep(remaining)
            done = time.perf_counter()
        batch = int(next(iter(inputs.values())).shape[0]) if self.config.max_batch_size > 0 and inputs else 1
        with self.stats.lock:
            counters = self.stats.counters
            counters["nv_inference_request_success"] += 1
            counters["nv_inference_count"] += batch
            counters["nv_inference_exec_count"] += 1
            counters["nv_inference_request_duration_us"] += (done - arrived) * 1e6
            counters["nv_inference_queue_duration_us"] += (started - arrived) * 1e6
            counters["nv_inference_compute_infer_duration_us"] += (done - started) * 1e6
        return outputs


def server_metadata() -> dict[str, Any]:
    """Server metadata (``GET /v2``, gRPC ServerMetadata): says plainly that this is not Triton."""
    return {"name": "lepton-triton-simulator", "version": "0.1.0", "extensions": ["binary_tensor_data", "model_repository"]}


def refuse_model_control() -> None:
    """RepositoryModelLoad/Unload in model control mode ``none``: Triton's ``UNAVAILABLE``."""
    raise TritonError("UNAVAILABLE", MODEL_CONTROL_DISABLED)
