"""Triton's restricted APIs: the flag syntax, request categories, and the HTTP refusal, as Triton does them.

The gRPC side (``UNAVAILABLE``, ``triton-grpc-protocol-<key>``) is in ``test_triton_grpc``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from lepton_workloads import triton_restricted
from lepton_workloads.triton_restricted import Restriction
from lepton_workloads.triton_simulator import Model, serve
from triton_fixtures import MODEL, expected, write_doubler

KEY, SECRET = "lepton-key", "s3cret:with=signs"
REFUSED = f"This API is restricted, expecting header '{KEY}'"


def test_flags_parse_as_tritons_command_line_parser() -> None:
    http = triton_restricted.parse_http([f"inference,model-config:{KEY}={SECRET}", "model-repository:admin=x"])
    assert http == {
        "inference": Restriction(KEY, SECRET), "model-config": Restriction(KEY, SECRET),
        "model-repository": Restriction("admin", "x"),
    }  # fmt: skip
    assert triton_restricted.parse_grpc([f"inference:{KEY}={SECRET}"]) == {
        "inference": Restriction(f"triton-grpc-protocol-{KEY}", SECRET)
    }


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["inference"], "--http-restricted-api option format is '<config name>:<setting>=<value>'. Got inference"),
        (["inference:key"], "option format is"),
        ([":key=value"], "option format is"),
        (["inference:=value"], "option format is"),
        (["inference:key="], "option format is"),
        (["inferences:key=value"], "unknown restricted api 'inferences' "),
        (["inference:a=1", "health,inference:b=2"], "restricted api 'inference' can not be specified in multiple"),
    ],
)
def test_bad_flags_are_refused_with_tritons_message(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        triton_restricted.parse_http(flags)


@pytest.mark.parametrize(
    ("path", "category"),
    [
        ("/v2/health/live", "health"), ("/v2/health/ready", "health"), ("/v2/models/m/ready", "health"),
        ("/v2/models/m/versions/1/ready", "health"), ("/v2", "metadata"), ("/v2/models/m", "metadata"),
        ("/v2/models/m/infer", "inference"), ("/v2/models/m/versions/3/infer", "inference"),
        ("/v2/models/m/generate_stream", "inference"), ("/v2/models/m/config", "model-config"),
        ("/v2/models/stats", "statistics"), ("/v2/models/m/stats", "statistics"),
        ("/v2/repository/index", "model-repository"), ("/v2/repository/models/m/load", "model-repository"),
        ("/v2/systemsharedmemory/region/r/register", "shared-memory"), ("/v2/cudasharedmemory/status", "shared-memory"),
        ("/v2/trace/setting", "trace"), ("/v2/models/m/trace/setting", "trace"), ("/v2/logging", "logging"),
        ("/v2/models/m/versions/1/trace/setting", None), ("/v2/models/m/versions/x/infer", None), ("/v3", None),
    ],
)  # fmt: skip
def test_http_paths_fall_in_tritons_categories(path: str, category: str | None) -> None:
    route = triton_restricted.http_route(path)
    assert (route.category if route else None) == category


def test_a_request_passes_only_with_the_exact_value() -> None:
    restrictions = {"inference": Restriction(KEY, SECRET)}
    assert triton_restricted.unmet(restrictions, "health", lambda _: None) is None
    assert triton_restricted.unmet(restrictions, "inference", {KEY: SECRET}.get) is None
    assert triton_restricted.unmet(restrictions, "inference", {KEY: "other"}.get) == restrictions["inference"]
    assert triton_restricted.unmet(restrictions, "inference", {}.get) == restrictions["inference"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_doubler(tmp_path_factory.mktemp("repository"))


@pytest.fixture
def address(repository: Path) -> Iterator[str]:
    """The simulator with inference behind the key and the repository behind a key nobody is given."""
    restrictions = triton_restricted.parse_http([f"inference:{KEY}={SECRET}", "model-repository:admin=never-given"])
    servers = serve(Model(repository, MODEL, service_time=0, concurrency=1), 0, None, restrictions=restrictions)
    yield f"127.0.0.1:{servers[0].server_address[1]}"
    for server in servers:
        server.shutdown()


def infer(client: triton_http.InferenceServerClient, headers: dict[str, str] | None) -> np.ndarray:
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    given = triton_http.InferInput("INPUT__0", list(batch.shape), "FP32")
    given.set_data_from_numpy(batch)
    result: np.ndarray = client.infer(MODEL, [given], headers=headers).as_numpy("OUTPUT__0")
    assert np.array_equal(result, expected(batch))
    return result


def test_infer_needs_the_key_over_http(address: str) -> None:
    client = triton_http.InferenceServerClient(address)
    infer(client, {KEY: SECRET})
    infer(client, {KEY.upper(): SECRET})  # libevhtp looks header names up case-insensitively
    for headers in (None, {KEY: "wrong"}, {KEY: SECRET.upper()}, {"other": SECRET}):
        with pytest.raises(InferenceServerException) as refused:
            infer(client, headers)
        assert refused.value.status() == "403" and refused.value.message() == REFUSED


def test_health_readiness_and_metadata_stay_open_when_only_inference_is_restricted(address: str) -> None:
    client = triton_http.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL)["name"] == MODEL
    assert client.get_model_config(MODEL)["max_batch_size"] == 8


def test_the_repository_is_refused_even_with_the_inference_key(address: str) -> None:
    client = triton_http.InferenceServerClient(address)
    for call in (client.get_model_repository_index, lambda **kw: client.load_model(MODEL, **kw),
                 lambda **kw: client.unload_model(MODEL, **kw)):  # fmt: skip
        with pytest.raises(InferenceServerException) as refused:
            call(headers={KEY: SECRET})
        assert refused.value.status() == "403"
        assert refused.value.message() == "This API is restricted, expecting header 'admin'"


def status_and_body(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_restriction_is_checked_before_the_method_and_unknown_paths_are_not_found(address: str) -> None:
    base = f"http://{address}"
    assert status_and_body(f"{base}/v2/models/{MODEL}/infer", "GET") == (403, {"error": REFUSED})
    assert status_and_body(f"{base}/v2/models/{MODEL}/infer", "GET", {KEY: SECRET}) == (405, {"error": "Method Not Allowed"})
    assert status_and_body(f"{base}/v2/nowhere") == (404, {"error": "Not Found"})
    assert status_and_body(f"{base}/v2/models/other/infer", "POST", {KEY: SECRET}) == (
        400, {"error": "Request for unknown model: 'other' is not found"})  # fmt: skip


def test_without_restrictions_model_control_is_refused_as_in_tritons_mode_none(repository: Path) -> None:
    servers = serve(Model(repository, MODEL, service_time=0, concurrency=1), 0, None)
    try:
        client = triton_http.InferenceServerClient(f"127.0.0.1:{servers[0].server_address[1]}")
        assert client.get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY"}]
        with pytest.raises(InferenceServerException) as refused:
            client.load_model(MODEL)
        assert refused.value.status() == "503"
        assert refused.value.message() == "explicit model load / unload is not allowed if polling is enabled"
    finally:
        for server in servers:
            server.shutdown()
