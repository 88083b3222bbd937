"""The Triton simulator's HTTP front end: Triton's HTTP/REST (KServe v2) endpoints, its routing, its restricted APIs.

A request is routed as Triton's ``HTTPAPIServer::Handle`` routes it
(``triton_restricted.http_route``); then, in the order of Triton's handlers,
its category's restriction is checked (``403``, Triton's message), then the
method (``405 Method Not Allowed``), then the model (Triton's unknown-model
error, ``400``). A path Triton does not serve is ``404 Not Found``. Served:

- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/<m>[/versions/<v>]/ready``
  (another model is Triton's ``400``, ``Request for unknown model: '<m>' is not found``:
  ``TRITONSERVER_ServerModelIsReady`` fails in ``GetModel`` before any readiness);
- ``GET /v2`` (server metadata), ``/v2/models/<m>`` (model metadata),
  ``/v2/models/<m>/config`` (the ``config.pbtxt`` as Triton's JSON);
- ``POST /v2/models/<m>/infer`` with JSON tensors or the binary-data extension
  (``Inference-Header-Content-Length``), answered with JSON tensors; run by the
  shared core (``triton_model.Model.infer``);
- ``POST /v2/repository/index`` and ``/v2/repository/models/<m>/load|unload``
  (refused: model control mode ``none``, Triton's ``503``).

Other Triton endpoints (statistics, trace, logging, shared memory, generate)
pass the restriction check and are answered ``501`` (not simulated).
``/metrics`` is served on both ports, never restricted, as Triton's metrics port.
Triton's HTTP endpoint has no TLS (no SSL option in ``src/http_server.cc`` or its
command line); neither has this one.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

import numpy as np
from google.protobuf import json_format

from lepton_workloads import triton_model, triton_restricted
from lepton_workloads.triton_model import Model, TritonError

#: The method each served endpoint takes (any other is ``405``, after the restriction check).
METHODS = {
    "server_health": "GET", "server_metadata": "GET", "model_ready": "GET", "model_metadata": "GET",
    "model_config": "GET", "infer": "POST", "repository_index": "POST", "repository_control": "POST",
}  # fmt: skip


def decode_inputs(header: dict[str, Any], binary: bytes, model: Model) -> dict[str, np.ndarray]:
    """The request's tensors, from JSON ``data`` or the binary-data extension (validated by ``Model.infer``)."""
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in header.get("inputs", []):
        dtype = model.input_dtype(item["name"], item["datatype"])
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            flat = np.frombuffer(binary[offset : offset + int(size)], dtype=dtype)
            offset += int(size)
        else:
            flat = np.asarray(item["data"], dtype=dtype).reshape(-1)
        arrays[item["name"]] = flat.reshape(item["shape"]).copy()
    return arrays


def infer_response(model: Model, header: dict[str, Any], outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "model_name": model.name, "model_version": triton_model.VERSION, "id": header.get("id", ""),
        "outputs": [
            {"name": name, "datatype": model.output_datatype(name), "shape": list(array.shape),
             "data": array.reshape(-1).tolist()}
            for name, array in outputs.items()
        ],
    }  # fmt: skip


def handler(model: Model, restrictions: triton_restricted.Restrictions) -> type[http.server.BaseHTTPRequestHandler]:
    """The request handler class serving ``model`` behind ``restrictions`` (both ports; ``/metrics`` on either)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY, as Triton's HTTP server: a response is two writes (headers, then body), and
        # with Nagle's algorithm the body waits for the client's delayed ACK of the headers, about
        # 40 ms on every request of a kept-alive connection (measured: 64 ms instead of 22 ms for a
        # 20 ms model), which Triton does not add and which skewed every latency the simulator served.
        disable_nagle_algorithm = True

        def _send(self, code: int, body: bytes = b"", content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, payload: Any) -> None:
            self._send(code, json.dumps(payload).encode())

        def _error(self, code: int, message: str) -> None:
            self._json(code, {"error": message})

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

        def _handle(self, method: str) -> None:
            body = self._body()  # read whole before answering, so that a kept-alive connection stays in step
            path = self.path.split("?")[0]
            if path == "/metrics":
                return self._send(200, model.stats.render(model.name).encode(), "text/plain; version=0.0.4")
            route = triton_restricted.http_route(path)
            if route is None:
                return self._error(404, "Not Found")
            unmet = triton_restricted.unmet(restrictions, route.category, self.headers.get)
            if unmet is not None:
                return self._error(triton_restricted.HTTP_REFUSED_STATUS, triton_restricted.http_refusal(unmet))
            if route.endpoint not in METHODS:
                return self._error(501, f"the Triton simulator does not implement {path}")
            if method != METHODS[route.endpoint]:
                return self._error(405, "Method Not Allowed")
            try:
                self._serve(route, body)
            except TritonError as error:
                self._error(error.http_status, error.message)

        def _serve(self, route: triton_restricted.HttpRoute, body: bytes) -> None:
            if route.endpoint == "server_health":
                return self._send(200)
            if route.endpoint == "server_metadata":
                return self._json(200, triton_model.server_metadata())
            if route.endpoint == "repository_index":
                return self._json(200, model.repository_index())
            if route.endpoint == "repository_control":
                return triton_model.refuse_model_control()
            model.check(route.model, route.version)
            if route.endpoint == "model_ready":
                return self._send(200)
            if route.endpoint == "model_metadata":
                return self._json(200, model.metadata())
            if route.endpoint == "model_config":
                return self._json(200, json_format.MessageToDict(model.config_message, preserving_proto_field_name=True))
            json_size = int(self.headers.get("Inference-Header-Content-Length") or len(body))
            try:
                header = json.loads(body[:json_size])
                inputs = decode_inputs(header, body[json_size:], model)
            except (ValueError, KeyError, TypeError) as error:
                raise TritonError("INVALID_ARG", f"{type(error).__name__}: {error}") from error
            return self._json(200, infer_response(model, header, model.infer(inputs)))

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self._handle("POST")

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


def serve(
    model: Model, http_port: int, metrics_port: int | None, host: str = "127.0.0.1",
    restrictions: triton_restricted.Restrictions | None = None,
) -> list[http.server.ThreadingHTTPServer]:  # fmt: skip
    """Start the HTTP servers in daemon threads; returns them (``server_address`` has the bound ports)."""
    handler_class = handler(model, restrictions or {})
    servers = [http.server.ThreadingHTTPServer((host, http_port), handler_class)]
    if metrics_port is not None:
        servers.append(http.server.ThreadingHTTPServer((host, metrics_port), handler_class))
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return servers
