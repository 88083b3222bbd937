"""A Triton stand-in for tests: Triton's HTTP v2 endpoints and metric names, on a real TorchScript or ONNX model.

Triton itself cannot run on the test machines, so the autoscaling e2e runs
this simulator, one process per Ready replica. It is *not* Triton. It serves
the subset of the KServe v2 protocol that Lepton and ``tritonclient.http``
use:

- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/<m>/ready``,
  ``GET /v2/models/<m>`` (metadata);
- ``POST /v2/models/<m>/infer`` with JSON tensors or the binary-data extension
  (``Inference-Header-Content-Length``); answers JSON tensors. The inputs run
  through the model repository's model file, by the platform of
  ``<m>/config.pbtxt`` (read with ``triton_config``; :data:`RUNNERS`):
  ``pytorch_libtorch`` loads ``<m>/1/model.pt`` with torch and passes the
  inputs in the config's order; ``onnxruntime_onnx`` runs ``<m>/1/model.onnx``
  in ONNX Runtime (CPU, one thread) by tensor name, after checking the config
  against the graph as Triton's onnxruntime backend does (a mismatch is an
  error at load).

Scheduling follows Triton's: ``--concurrency`` model instances execute at a
time, the rest wait in the queue; each execution takes at least
``--service-time-ms`` (a GPU model's latency, on CPU). ``/metrics`` (on the
metrics port, as Triton) exports Triton's names with Triton's semantics:
cumulative counters without a ``_total`` suffix (``nv_inference_request_success``,
``nv_inference_request_failure``, ``nv_inference_count``, ``nv_inference_exec_count``,
``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
``nv_inference_compute_infer_duration_us``) and the ``nv_inference_pending_request_count``
gauge (requests received and not yet executing), labelled ``model`` and ``version``.

Command lines: its own (``--model-repository DIR --model NAME --host ...``), and,
after :data:`TRITONSERVER_FLAGS`, the ``tritonserver`` command line the operator
renders for an InferenceService's replicas. The simulator image
(``images/triton-simulator``) installs a ``tritonserver`` script that passes its
arguments that way, so a local overlay can swap the image of an
InferenceService without changing anything else: the repository's one model is
served on ``--http-port`` and ``--metrics-port`` on every address, and the
flags that have nothing to simulate (gRPC, exit timeout, logging) are named on
stdout and ignored.
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
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


class Model:
    """One TorchScript or ONNX model served with ``concurrency`` instances."""

    def __init__(self, repository: Path, name: str, service_time: float, concurrency: int) -> None:
        directory = repository / name
        self.name = name
        self.config = triton_config.from_protobuf(triton_config.parse((directory / "config.pbtxt").read_text()))
        if self.config.format not in RUNNERS:
            raise ValueError(f"{name}: the simulator runs {sorted(RUNNERS)} models, not {self.config.format!r}")
        self.run = RUNNERS[self.config.format](directory / VERSION / triton_config.model_file(self.config.format), self.config)
        self.service_time = service_time
        self.slots = threading.Semaphore(concurrency)
        self.stats = Stats()

    def metadata(self) -> dict[str, Any]:
        def tensors(items: Sequence[triton_config.Tensor]) -> list[dict[str, Any]]:
            batch = [-1] if self.config.max_batch_size > 0 else []
            return [{"name": t.name, "datatype": wire_type(t.data_type), "shape": [*batch, *t.dims]} for t in items]

        return {"name": self.name, "versions": [VERSION], "platform": triton_config.FORMATS[self.config.format][0],
                "inputs": tensors(self.config.inputs), "outputs": tensors(self.config.outputs)}  # fmt: skip

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue for an instance, execute (at least ``service_time``), count as Triton does.

        A failure raises; the caller counts it (``Stats.count_failure``).
        """
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


def check_shape(tensor: triton_config.Tensor, shape: Sequence[int], max_batch_size: int) -> None:
    """Refuse a shape the model config does not allow, as Triton does."""
    dims = list(shape[1:]) if max_batch_size > 0 else list(shape)
    if max_batch_size > 0 and not 1 <= shape[0] <= max_batch_size:
        raise ValueError(f"{tensor.name}: batch size {shape[0]} is not in 1..{max_batch_size}")
    if len(dims) != len(tensor.dims) or any(want not in (-1, got) for want, got in zip(tensor.dims, dims, strict=True)):
        raise ValueError(f"{tensor.name}: unexpected shape {list(shape)}, model expects {list(tensor.dims)}")


def decode_inputs(header: dict[str, Any], binary: bytes, model: Model) -> dict[str, np.ndarray]:
    """The request's tensors, from JSON ``data`` or the binary-data extension; shapes checked."""
    known = {t.name: t for t in model.config.inputs}
    types = {t.name: t.data_type for t in model.config.inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in header.get("inputs", []):
        dtype = np.dtype(NUMPY_TYPES[types.get(item["name"], "TYPE_" + item["datatype"])])
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            flat = np.frombuffer(binary[offset : offset + int(size)], dtype=dtype)
            offset += int(size)
        else:
            flat = np.asarray(item["data"], dtype=dtype).reshape(-1)
        if item["name"] not in known:
            raise ValueError(f"unknown input {item['name']}")
        check_shape(known[item["name"]], item["shape"], model.config.max_batch_size)
        arrays[item["name"]] = flat.reshape(item["shape"]).copy()
    missing = set(known) - set(arrays)
    if missing:
        raise ValueError(f"missing inputs {sorted(missing)}")
    return arrays


MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?(/ready|/infer)?$")


def handler(model: Model) -> type[http.server.BaseHTTPRequestHandler]:
    """The request handler class serving ``model`` (both ports; ``/metrics`` on either)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, body: bytes = b"", content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, payload: Any) -> None:
            self._send(code, json.dumps(payload).encode())

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            if path in ("/v2/health/live", "/v2/health/ready"):
                return self._send(200)
            if path == "/metrics":
                return self._send(200, model.stats.render(model.name).encode(), "text/plain; version=0.0.4")
            found = MODEL_PATH.match(path)
            if found and found.group(1) == model.name and found.group(2) in (None, "/ready"):
                return self._send(200) if found.group(2) else self._json(200, model.metadata())
            return self._json(404, {"error": f"unknown path {path}"})

        def _body(self) -> bytes:
            """The request body, sized or chunked (proxies such as the API server's chunk it)."""
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline().strip():  # trailers, up to the empty line
                pass
            return b"".join(chunks)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self._body()
            found = MODEL_PATH.match(self.path.split("?")[0])
            if not found or found.group(2) != "/infer" or found.group(1) != model.name:
                return self._json(404, {"error": f"unknown model or path {self.path}"})
            json_size = int(self.headers.get("Inference-Header-Content-Length") or len(body))
            try:
                header = json.loads(body[:json_size])
                outputs = model.infer(decode_inputs(header, body[json_size:], model))
            except Exception as error:  # a bad request is the client's problem, reported as Triton does
                model.stats.count_failure()
                return self._json(400, {"error": f"{type(error).__name__}: {error}"})
            types = {t.name: t.data_type for t in model.config.outputs}
            payload = {
                "model_name": model.name,
                "model_version": VERSION,
                "id": header.get("id", ""),
                "outputs": [
                    {"name": name, "datatype": wire_type(types[name]), "shape": list(array.shape),
                     "data": array.reshape(-1).tolist()}
                    for name, array in outputs.items()
                ],
            }  # fmt: skip
            return self._json(200, payload)

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


def serve(model: Model, http_port: int, metrics_port: int | None, host: str = "127.0.0.1") -> list[http.server.ThreadingHTTPServer]:
    """Start the servers in daemon threads; returns them (``server_address`` has the bound ports)."""
    servers = [http.server.ThreadingHTTPServer((host, http_port), handler(model))]
    if metrics_port is not None:
        servers.append(http.server.ThreadingHTTPServer((host, metrics_port), handler(model)))
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return servers


#: First argument of a ``tritonserver`` command line handed to the simulator.
TRITONSERVER_FLAGS = "--tritonserver-flags"


def tritonserver_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Triton's flags -> (the simulator's arguments, the Triton flags it ignores).

    The model is the only directory of the repository that has a ``config.pbtxt``
    (the operator stages exactly one); more or none is an error, as in Triton's
    explicit model control.
    """
    parse = argparse.ArgumentParser(prog="tritonserver (Lepton's Triton simulator)", add_help=False, allow_abbrev=False)
    parse.add_argument("--model-repository", required=True)
    parse.add_argument("--http-port", default="8000")
    parse.add_argument("--metrics-port", default="8002")
    parse.add_argument("--http-address", default="0.0.0.0")  # noqa: S104 - a server in a pod
    args, ignored = parse.parse_known_args(list(argv))
    repository = Path(args.model_repository)
    models = sorted(d.name for d in repository.iterdir() if (d / "config.pbtxt").is_file()) if repository.is_dir() else []
    if len(models) != 1:
        raise SystemExit(f"triton_simulator: {repository} must hold exactly one model with a config.pbtxt, found {models}")
    own = [f"--model-repository={repository}", f"--model={models[0]}", f"--host={args.http_address}",
           f"--http-port={args.http_port}", f"--metrics-port={args.metrics_port}"]  # fmt: skip
    return own, ignored


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [TRITONSERVER_FLAGS]:
        argv, ignored = tritonserver_args(argv[1:])
        if ignored:
            print(f"triton_simulator: not Triton; ignoring {' '.join(ignored)}", flush=True)
    parse = argparse.ArgumentParser(prog="triton_simulator", description=__doc__.split("\n")[0])
    parse.add_argument("--model-repository", required=True)
    parse.add_argument("--model", required=True)
    parse.add_argument("--host", default="127.0.0.1")
    parse.add_argument("--http-port", type=int, default=8000)
    parse.add_argument("--metrics-port", type=int, default=8002)
    parse.add_argument("--service-time-ms", type=float, default=20.0)
    parse.add_argument("--concurrency", type=int, default=1)
    args = parse.parse_args(argv)
    torch.set_num_threads(1)
    model = Model(Path(args.model_repository), args.model, args.service_time_ms / 1000, args.concurrency)
    servers = serve(model, args.http_port, args.metrics_port, args.host)
    ports = [server.server_address[1] for server in servers]
    print(f"triton_simulator: serving {args.model} on {args.host} ports {ports}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
