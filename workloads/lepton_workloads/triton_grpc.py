"""The Triton simulator's gRPC front end: Triton's ``inference.GRPCInferenceService``, its restricted protocols, its TLS.

The service is the one ``tritonclient.grpc`` ships (``service_pb2_grpc``), so
the messages are Triton's. Served: ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata, ModelConfig (the ``config.pbtxt`` message),
ModelInfer (tensors in ``raw_input_contents`` or typed ``contents``, answered in
``raw_output_contents``; run by the shared core, ``triton_model.Model.infer``,
so HTTP and gRPC share one queue and one set of counters), RepositoryIndex, and
RepositoryModelLoad/Unload refused as Triton refuses them in model control
mode ``none`` (``UNAVAILABLE``). Any other RPC is the generated servicer's
``UNIMPLEMENTED``.

Restrictions (``--grpc-restricted-protocol``) are checked by one interceptor,
before the RPC runs, as Triton checks them before executing a call
(``ExecutePrecondition``): ``UNAVAILABLE``, ``This protocol is restricted,
expecting header 'triton-grpc-protocol-<key>'`` (see ``triton_restricted``).
Errors of the core map to gRPC codes as Triton's ``GrpcStatusUtil::CodeToStatus``.

TLS follows Triton's ``grpc::Server`` constructor (``src/grpc/grpc_server.cc``,
commit e1db8a6): with ``--grpc-use-ssl`` the server presents
``--grpc-server-cert``/``--grpc-server-key`` and does not ask for a client
certificate; ``--grpc-use-ssl-mutual`` (which turns SSL on, whatever its value:
``command_line_parser.cc``) requires a client certificate signed by
``--grpc-root-cert``. grpcio's ``ssl_server_credentials`` makes the same two
modes (``require_client_auth``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs; types-grpcio is not a dependency
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from lepton_workloads import triton_model, triton_restricted
from lepton_workloads.triton_model import Model, TritonError

#: Triton's ``MAX_GRPC_MESSAGE_SIZE`` (INT32_MAX): big batches fit, as with Triton.
MAX_MESSAGE = 2**31 - 1
#: numpy dtype kind and size -> the ``InferTensorContents`` field that carries it.
CONTENTS_FIELDS = {
    "bool": "bool_contents", "int8": "int_contents", "int16": "int_contents", "int32": "int_contents",
    "int64": "int64_contents", "uint8": "uint_contents", "uint16": "uint_contents", "uint32": "uint_contents",
    "uint64": "uint64_contents", "float32": "fp32_contents", "float64": "fp64_contents",
}  # fmt: skip


@dataclass(frozen=True)
class Tls:
    """Triton's gRPC SSL options: the server's PEM certificate and key, and the CA client certificates must chain to."""

    server_cert: Path
    server_key: Path
    root_cert: Path | None = None
    mutual: bool = False


def credentials(tls: Tls) -> grpc.ServerCredentials:
    """grpcio credentials for ``tls``; ``ValueError`` when a file Triton would read is missing."""
    if tls.mutual and tls.root_cert is None:
        raise ValueError("--grpc-use-ssl-mutual needs --grpc-root-cert to verify client certificates")
    pair = (tls.server_key.read_bytes(), tls.server_cert.read_bytes())
    root = tls.root_cert.read_bytes() if tls.root_cert is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=tls.mutual)


def decode_inputs(request: Any, model: Model) -> dict[str, np.ndarray]:
    """The request's tensors, from ``raw_input_contents`` (what tritonclient sends) or typed ``contents``."""
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        dtype = model.input_dtype(tensor.name, tensor.datatype)
        if request.raw_input_contents:
            flat = np.frombuffer(request.raw_input_contents[index], dtype=dtype)
        else:
            flat = np.asarray(getattr(tensor.contents, CONTENTS_FIELDS[dtype.name]), dtype=dtype)
        arrays[tensor.name] = flat.reshape(list(tensor.shape)).copy()
    return arrays


def _tensors_metadata(items: Sequence[dict[str, Any]]) -> list[Any]:
    return [service_pb2.ModelMetadataResponse.TensorMetadata(**item) for item in items]


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Triton's gRPC service over one :class:`Model`; a :class:`TritonError` becomes Triton's status."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - the RPC's name
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return answer(context, lambda: self.model.check(request.name, request.version),
                      lambda _: service_pb2.ModelReadyResponse(ready=True))  # fmt: skip

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return service_pb2.ServerMetadataResponse(**triton_model.server_metadata())

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def respond(_: None) -> Any:
            found = self.model.metadata()
            return service_pb2.ModelMetadataResponse(
                name=found["name"], versions=found["versions"], platform=found["platform"],
                inputs=_tensors_metadata(found["inputs"]), outputs=_tensors_metadata(found["outputs"]),
            )  # fmt: skip

        return answer(context, lambda: self.model.check(request.name, request.version), respond)

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return answer(context, lambda: self.model.check(request.name, request.version),
                      lambda _: service_pb2.ModelConfigResponse(config=self.model.config_message))  # fmt: skip

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def run() -> dict[str, np.ndarray]:
            self.model.check(request.model_name, request.model_version)
            try:
                inputs = decode_inputs(request, self.model)
            except (ValueError, KeyError, IndexError) as error:
                raise TritonError("INVALID_ARG", f"{type(error).__name__}: {error}") from error
            return self.model.infer(inputs)

        def respond(outputs: dict[str, np.ndarray]) -> Any:
            return service_pb2.ModelInferResponse(
                model_name=self.model.name, model_version=triton_model.VERSION, id=request.id,
                outputs=[service_pb2.ModelInferResponse.InferOutputTensor(
                    name=name, datatype=self.model.output_datatype(name), shape=list(array.shape))
                    for name, array in outputs.items()],
                raw_output_contents=[np.ascontiguousarray(array).tobytes() for array in outputs.values()],
            )  # fmt: skip

        return answer(context, run, respond)

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        models = [service_pb2.RepositoryIndexResponse.ModelIndex(**entry) for entry in self.model.repository_index()]
        return service_pb2.RepositoryIndexResponse(models=models)

    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return answer(context, triton_model.refuse_model_control, lambda _: service_pb2.RepositoryModelLoadResponse())

    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return answer(context, triton_model.refuse_model_control, lambda _: service_pb2.RepositoryModelUnloadResponse())


def answer(context: grpc.ServicerContext, work: Callable[[], Any], respond: Callable[[Any], Any]) -> Any:
    """``respond(work())``, or the call aborted with the code and message of the :class:`TritonError` it raised."""
    try:
        result = work()
    except TritonError as error:
        context.abort(grpc.StatusCode[error.grpc_status], error.message)
    return respond(result)


class RestrictionInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses an RPC whose category is restricted unless its metadata carries the key, as Triton."""

    def __init__(self, restrictions: triton_restricted.Restrictions) -> None:
        self.restrictions = restrictions

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method.rsplit("/", 1)[-1]
        category = triton_restricted.GRPC_CATEGORIES.get(method)
        metadata = dict(reversed(handler_call_details.invocation_metadata or ()))  # the first value of a key wins
        unmet = triton_restricted.unmet(self.restrictions, category, metadata.get) if category else None
        if unmet is None:
            return continuation(handler_call_details)
        message = triton_restricted.grpc_refusal(unmet)
        code = grpc.StatusCode[triton_restricted.GRPC_REFUSED_CODE]

        def refuse(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(code, message)

        if method == "ModelStreamInfer":
            return grpc.stream_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


def serve(
    model: Model, port: int, host: str = "127.0.0.1", restrictions: triton_restricted.Restrictions | None = None,
    tls: Tls | None = None, workers: int = 64,
) -> tuple[grpc.Server, int]:  # fmt: skip
    """Start Triton's gRPC service for ``model``; returns the server and its bound port (``port`` 0 picks one)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=[RestrictionInterceptor(restrictions or {})],
        options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(model), server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials(tls)) if tls else server.add_insecure_port(address)
    server.start()
    return server, bound
