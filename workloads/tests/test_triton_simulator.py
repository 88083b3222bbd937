"""The Triton stand-in, driven by tritonclient.http: health, model readiness, infer, Triton's metrics.

Each test runs on a TorchScript and on an ONNX export of the same model.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http

from lepton_workloads import export, triton_config
from lepton_workloads.triton_simulator import Model, serve
from triton_fixtures import Doubler, write_doubler

@pytest.fixture(scope="module", params=["torchscript", "onnx"])
def repository(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """``double`` exported as the trainer exports (every test runs on TorchScript and on ONNX); read only."""
    return write_doubler(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture
def simulator(repository: Path) -> Iterator[tuple[Model, str, str]]:
    model = Model(repository, "double", service_time=0.05, concurrency=1)
    servers = serve(model, 0, 0)
    http_port, metrics_port = (server.server_address[1] for server in servers)
    yield model, f"127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    for server in servers:
        server.shutdown()


SAMPLE = re.compile(r'^(\w+)\{model="double",version="1"\} (\S+)$')


def samples(url: str) -> dict[str, float]:
    """Samples by their exposed name (Prometheus keeps Triton's counter names; no ``_total`` added)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert types["nv_inference_pending_request_count"] == "gauge"
    assert {kind for name, kind in types.items() if name != "nv_inference_pending_request_count"} == {"counter"}
    found = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            matched = SAMPLE.match(line)
            assert matched, line
            found[matched.group(1)] = float(matched.group(2))
    return found


def request(client: triton_http.InferenceServerClient, batch: np.ndarray, binary: bool) -> np.ndarray:
    given = triton_http.InferInput("INPUT__0", list(batch.shape), "FP32")
    given.set_data_from_numpy(batch, binary_data=binary)
    wanted = triton_http.InferRequestedOutput("OUTPUT__0", binary_data=binary)
    result = client.infer("double", [given], outputs=[wanted])
    output: np.ndarray = result.as_numpy("OUTPUT__0")
    return output


def test_health_readiness_and_metadata(simulator: tuple[Model, str, str]) -> None:
    model, address, _ = simulator
    client = triton_http.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("double")
    assert not client.is_model_ready("other")
    metadata = client.get_model_metadata("double")
    assert metadata["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["platform"] == triton_config.FORMATS[model.config.format][0]  # pytorch_libtorch, onnxruntime_onnx


@pytest.mark.parametrize("binary", [True, False])
def test_infer_runs_the_model(simulator: tuple[Model, str, str], binary: bool) -> None:
    _, address, _ = simulator
    client = triton_http.InferenceServerClient(address)
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(request(client, batch, binary), batch * 2 + 1)


def test_metrics_have_triton_names_and_semantics(simulator: tuple[Model, str, str]) -> None:
    model, address, metrics_url = simulator
    batch = np.ones((3, 4), dtype=np.float32)

    def one(_: int) -> np.ndarray:
        return request(triton_http.InferenceServerClient(address), batch, True)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # one instance: three of four wait in the queue
        futures = [pool.submit(one, i) for i in range(4)]
        seen_pending = 0.0
        while not all(f.done() for f in futures):
            seen_pending = max(seen_pending, samples(metrics_url)["nv_inference_pending_request_count"])
        assert all(np.array_equal(f.result(), batch * 2 + 1) for f in futures)
    found = samples(metrics_url)
    assert seen_pending >= 1
    assert found["nv_inference_request_success"] == 4 and found["nv_inference_request_failure"] == 0
    assert found["nv_inference_count"] == 12 and found["nv_inference_exec_count"] == 4
    assert found["nv_inference_pending_request_count"] == 0
    assert found["nv_inference_compute_infer_duration_us"] >= 4 * 50_000  # service time per execution
    assert found["nv_inference_queue_duration_us"] >= 50_000 * 0.9  # someone waited a whole execution
    total = found["nv_inference_request_duration_us"]
    assert total >= found["nv_inference_queue_duration_us"] + found["nv_inference_compute_infer_duration_us"] - 1


def test_bad_requests_fail_and_count(simulator: tuple[Model, str, str]) -> None:
    _, address, metrics_url = simulator
    client = triton_http.InferenceServerClient(address)
    with pytest.raises(Exception, match="400|shape|size"):
        request(client, np.ones((2, 3), dtype=np.float32), True)
    assert samples(metrics_url)["nv_inference_request_failure"] == 1


def test_a_chunked_request_body_is_read_whole(simulator: tuple[Model, str, str]) -> None:
    """Proxies (the API server's pod proxy among them) may forward a body in chunks."""
    _, address, _ = simulator
    body = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 4], "data": [0, 1, 2, 3]}]})
    connection = http.client.HTTPConnection(address, timeout=10)
    connection.putrequest("POST", "/v2/models/double/infer")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    for part in (body[:10], body[10:]):
        connection.send(f"{len(part):x}\r\n{part}\r\n".encode())
    connection.send(b"0\r\n\r\n")
    answer = json.loads(connection.getresponse().read())
    assert answer["outputs"][0]["data"] == [1.0, 3.0, 5.0, 7.0]


def test_an_onnx_model_whose_config_does_not_match_the_graph_is_refused_at_load(tmp_path: Path) -> None:
    directory = export.write(Doubler(), (4,), tmp_path, "double", max_batch_size=8, export_format="onnx")
    wrong = triton_config.ModelConfig(
        name="double", format="onnxruntime", max_batch_size=8,
        inputs=(triton_config.Tensor("INPUT__0", "TYPE_FP32", (5,)),),
        outputs=(triton_config.Tensor("OUTPUT__0", "TYPE_FP32", (4,)),),
    )  # fmt: skip
    (directory / "config.pbtxt").write_text(triton_config.render(wrong))
    with pytest.raises(ValueError, match=r"model.onnx does not match config.pbtxt: input INPUT__0: config says TYPE_FP32 \[5\]"):
        Model(tmp_path, "double", service_time=0, concurrency=1)


def test_responses_are_not_held_back_by_nagle_on_kept_alive_connections(tmp_path: Path) -> None:
    """Headers and body go out as two writes: without TCP_NODELAY (as Triton sets it) the body waits
    for the client's delayed ACK, about 40 ms per request on a kept-alive connection."""
    model = Model(write_doubler(tmp_path), "double", service_time=0.0, concurrency=1)
    servers = serve(model, 0, None)
    try:
        assert servers and all(server.RequestHandlerClass.disable_nagle_algorithm for server in servers)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
