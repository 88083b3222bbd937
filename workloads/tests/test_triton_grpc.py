"""The simulator's gRPC front end, driven by tritonclient.grpc: Triton's RPCs, restrictions, TLS and mutual TLS.

Certificates come from a CA the test makes (``certificates.make_certificates``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc_client
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from lepton_workloads import triton_grpc, triton_restricted
from lepton_workloads.triton_simulator import TRITONSERVER_FLAGS, Model, serve, tritonserver_args
from localcluster.certificates import Certificates, make_certificates
from triton_fixtures import MODEL, expected, write_doubler

KEY, SECRET = "lepton-key", "s3cret"
HEADER = f"triton-grpc-protocol-{KEY}"
REFUSED = f"This protocol is restricted, expecting header '{HEADER}'"
BATCH = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_doubler(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


Start = Callable[..., str]


@pytest.fixture
def start(repository: Path) -> Iterator[Start]:
    """Starts the gRPC service (keyword arguments of ``triton_grpc.serve``) and returns its ``localhost:port``."""
    servers = []

    def started(**options: object) -> str:
        server, port = triton_grpc.serve(Model(repository, MODEL, service_time=0, concurrency=1), 0, **options)  # type: ignore[arg-type]
        servers.append(server)
        return f"localhost:{port}"

    yield started
    for server in servers:
        server.stop(None)


def infer(client: triton_grpc_client.InferenceServerClient, headers: dict[str, str] | None = None) -> None:
    given = triton_grpc_client.InferInput("INPUT__0", list(BATCH.shape), "FP32")
    given.set_data_from_numpy(BATCH)
    result = client.infer(MODEL, [given], headers=headers)
    assert np.array_equal(result.as_numpy("OUTPUT__0"), expected(BATCH))


def refusal(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as refused:
        call()
    return refused.value.status(), refused.value.message()


def test_tritons_rpcs_answer_from_the_model(start: Start) -> None:
    client = triton_grpc_client.InferenceServerClient(start())
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["platform"] == "pytorch_libtorch" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": ["-1", "4"]}]
    config = client.get_model_config(MODEL).config
    assert config.max_batch_size == 8 and config.input[0].name == "INPUT__0"  # the config.pbtxt message itself
    infer(client)
    assert refusal(lambda: client.is_model_ready("other")) == (
        "StatusCode.INVALID_ARGUMENT", "Request for unknown model: 'other' is not found")  # fmt: skip
    assert refusal(lambda: infer_shape(client, (9, 4)))[0] == "StatusCode.INVALID_ARGUMENT"  # batch over max_batch_size


def infer_shape(client: triton_grpc_client.InferenceServerClient, shape: tuple[int, ...]) -> None:
    given = triton_grpc_client.InferInput("INPUT__0", list(shape), "FP32")
    given.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    client.infer(MODEL, [given])


def test_grpc_and_http_share_one_model_and_its_counters(repository: Path) -> None:
    model = Model(repository, MODEL, service_time=0, concurrency=1)
    servers = serve(model, 0, None)
    server, port = triton_grpc.serve(model, 0)
    try:
        infer(triton_grpc_client.InferenceServerClient(f"localhost:{port}"))
        given = triton_http.InferInput("INPUT__0", list(BATCH.shape), "FP32")
        given.set_data_from_numpy(BATCH)
        triton_http.InferenceServerClient(f"127.0.0.1:{servers[0].server_address[1]}").infer(MODEL, [given])
        assert model.stats.counters["nv_inference_request_success"] == 2
        assert model.stats.counters["nv_inference_count"] == 4
    finally:
        server.stop(None)
        for http_server in servers:
            http_server.shutdown()


def test_infer_needs_the_key_and_health_stays_open(start: Start) -> None:
    restrictions = triton_restricted.parse_grpc([f"inference:{KEY}={SECRET}"])
    client = triton_grpc_client.InferenceServerClient(start(restrictions=restrictions))
    infer(client, {HEADER: SECRET})
    for headers in (None, {HEADER: "wrong"}, {KEY: SECRET}):  # the key alone, without Triton's prefix, is not it
        assert refusal(lambda: infer(client, headers)) == ("StatusCode.UNAVAILABLE", REFUSED)  # noqa: B023
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL).name == MODEL


def test_the_repository_rpcs_are_refused(start: Start) -> None:
    restrictions = triton_restricted.parse_grpc([f"inference:{KEY}={SECRET}", "model-repository:admin=never-given"])
    client = triton_grpc_client.InferenceServerClient(start(restrictions=restrictions))
    admin = "This protocol is restricted, expecting header 'triton-grpc-protocol-admin'"
    for call in (client.get_model_repository_index, lambda headers: client.load_model(MODEL, headers=headers),
                 lambda headers: client.unload_model(MODEL, headers=headers)):  # fmt: skip
        assert refusal(lambda: call(headers={HEADER: SECRET})) == ("StatusCode.UNAVAILABLE", admin)  # noqa: B023
    open_client = triton_grpc_client.InferenceServerClient(start())
    assert [m.name for m in open_client.get_model_repository_index().models] == [MODEL]
    assert refusal(lambda: open_client.load_model(MODEL)) == (
        "StatusCode.UNAVAILABLE", "explicit model load / unload is not allowed if polling is enabled")  # fmt: skip


def test_tls_serves_a_client_that_trusts_the_ca_only(start: Start, certificates: Certificates) -> None:
    url = start(tls=triton_grpc.Tls(certificates.server_cert, certificates.server_key))
    trusting = triton_grpc_client.InferenceServerClient(url, ssl=True, root_certificates=str(certificates.ca))
    infer(trusting)
    untrusting = triton_grpc_client.InferenceServerClient(url, ssl=True)  # the system's roots, not the test's CA
    assert refusal(lambda: infer(untrusting))[0] == "StatusCode.UNAVAILABLE"
    plaintext = triton_grpc_client.InferenceServerClient(url)
    assert refusal(lambda: infer(plaintext))[0] == "StatusCode.UNAVAILABLE"


def test_mutual_tls_refuses_a_client_without_a_certificate(start: Start, certificates: Certificates) -> None:
    tls = triton_grpc.Tls(certificates.server_cert, certificates.server_key, certificates.ca, mutual=True)
    url = start(tls=tls)
    anonymous = triton_grpc_client.InferenceServerClient(url, ssl=True, root_certificates=str(certificates.ca))
    assert refusal(lambda: infer(anonymous))[0] == "StatusCode.UNAVAILABLE"
    known = triton_grpc_client.InferenceServerClient(
        url, ssl=True, root_certificates=str(certificates.ca), private_key=str(certificates.client_key),
        certificate_chain=str(certificates.client_cert),
    )  # fmt: skip
    infer(known)


def test_tritons_flags_reach_the_simulator(repository: Path) -> None:
    own, ignored = tritonserver_args([
        f"--model-repository={repository}", "--grpc-port=9001", "--grpc-use-ssl-mutual=false",
        "--grpc-server-cert=/c.pem", "--grpc-server-key=/k.pem", f"--grpc-restricted-protocol=inference:{KEY}={SECRET}",
        f"--http-restricted-api=inference:{KEY}={SECRET}", "--exit-timeout-secs=5",
    ])  # fmt: skip
    assert "--grpc-port=9001" in own
    assert "--grpc-use-ssl=true" in own and not any("mutual" in a for a in own)  # Triton: mutual turns SSL on, any value
    assert f"--grpc-restricted-protocol=inference:{KEY}={SECRET}" in own and "--grpc-server-key=/k.pem" in own
    assert f"--http-restricted-api=inference:{KEY}={SECRET}" in own and ignored == ["--exit-timeout-secs=5"]
    assert not any(a.startswith("--grpc-port") for a in tritonserver_args([f"--model-repository={repository}",
                                                                          "--allow-grpc=false"])[0])  # fmt: skip


def test_the_tritonserver_command_line_serves_grpc_with_key_and_tls(repository: Path, certificates: Certificates) -> None:
    """The whole path the simulator image takes: ``tritonserver <Triton's flags>`` in a process of its own."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lepton_workloads.triton_simulator", TRITONSERVER_FLAGS, f"--model-repository={repository}",
         "--http-address=127.0.0.1", "--http-port=0", "--metrics-port=0", "--grpc-port=0", "--grpc-use-ssl=true",
         f"--grpc-server-cert={certificates.server_cert}", f"--grpc-server-key={certificates.server_key}",
         f"--grpc-restricted-protocol=inference:{KEY}={SECRET}"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = next(line for line in process.stdout if line.startswith("triton_simulator: serving"))
        grpc_port = int(line.rstrip("]\n").rsplit(",", 1)[-1])
        client = triton_grpc_client.InferenceServerClient(
            f"localhost:{grpc_port}", ssl=True, root_certificates=str(certificates.ca))
        infer(client, {HEADER: SECRET})
        assert refusal(lambda: infer(client)) == ("StatusCode.UNAVAILABLE", REFUSED)
    finally:
        process.terminate()
        process.wait(timeout=30)
