"""PromQL for Triton's signals and reading instant queries from Prometheus' HTTP API (a fake server)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_operator.scaling import signals
from lepton_operator.scaling.signals import PrometheusError, Series

SERIES = Series("prod", "resnet-serve", "resnet")
SEL = '{namespace="prod",service="resnet-serve",model="resnet"}'


def test_selector_names_namespace_service_and_model_and_escapes() -> None:
    assert SERIES.selector() == SEL
    assert Series("n", 's"x', "m").selector() == '{namespace="n",service="s\\"x",model="m"}'


@pytest.mark.parametrize(
    ("signal", "promql", "total"),
    [
        ("pendingRequests", f"sum(nv_inference_pending_request_count{SEL})", True),
        ("concurrency", f"sum(rate(nv_inference_request_duration_us{SEL}[30s])) / 1e6", True),
        ("queueTimeMicros", f"sum(rate(nv_inference_queue_duration_us{SEL}[30s]))"
                            f" / sum(rate(nv_inference_request_success{SEL}[30s]))", False),
        ("rps", f"sum(rate(nv_inference_request_success{SEL}[30s]))", True),
    ],
)  # fmt: skip
def test_signal_queries(signal: Any, promql: str, total: bool) -> None:
    query = signals.signal_query(signal, SERIES, 30)
    assert (query.promql, query.total) == (promql, total)


def test_activity_and_demand_queries() -> None:
    assert signals.activity_query(SERIES, 60) == (
        f"sum(increase(nv_inference_request_success{SEL}[60s])) + sum(nv_inference_pending_request_count{SEL})"
    )
    triton = f"sum(nv_inference_pending_request_count{SEL})"
    held = 'sum(lepton_activator_pending_requests{namespace="prod",service="resnet-serve"})'
    assert signals.demand_query(SERIES) == f"({triton} + {held}) or {triton} or {held}"


TRITON_PENDING = 'nv_inference_pending_request_count{namespace="prod",service="resnet-serve",model="resnet",pod="%s"}'
HELD = 'lepton_activator_pending_requests{namespace="prod",service="resnet-serve",pod="%s"}'


@pytest.mark.parametrize(
    ("series", "demand"),
    [
        ({TRITON_PENDING % "t1": 2, TRITON_PENDING % "t2": 1, HELD % "a1": 3, HELD % "a2": 1}, 7),  # both report
        ({HELD % "a1": 4, HELD % "a2": 0}, 4),  # at zero: only the activators report
        ({TRITON_PENDING % "t1": 5}, 5),  # no activator (minReplicas >= 1)
        ({HELD % "a1": 0}, 0),  # idle at zero: known zero, not unknown
        ({HELD.replace("resnet-serve", "other") % "a1": 9}, None),  # another service's demand: none of ours
    ],
)
def test_demand_query_in_prometheus_adds_held_requests_and_falls_back_to_either_side(
    tmp_path: Path, series: dict[str, float], demand: float | None
) -> None:
    """Evaluated by Prometheus itself (``promtool test rules``): a plain sum would be empty at zero replicas."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make tools` (Debian package prometheus)"
    (tmp_path / "rules.yaml").write_text("groups: []\n")
    expected = [] if demand is None else [{"labels": "{}", "value": demand}]
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": name, "values": f"{value:g}x2"} for name, value in series.items()],
            "promql_expr_test": [{"expr": signals.demand_query(SERIES), "eval_time": "1m", "exp_samples": expected}],
        }],
    }  # fmt: skip
    (tmp_path / "test.yaml").write_text(json.dumps(test))
    result = subprocess.run([promtool, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_load_by_pod_query() -> None:
    assert signals.load_by_pod_query(SERIES, 20) == (
        f"sum by (pod) (rate(nv_inference_request_duration_us{SEL}[20s])) / 1e6"
        f" + sum by (pod) (nv_inference_pending_request_count{SEL})"
    )


def test_parse_by_pod() -> None:
    payload = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pod": "a"}, "value": [0, "1.5"]}, {"metric": {"pod": "b"}, "value": [0, "NaN"]},
        {"metric": {}, "value": [0, "3"]}]}}  # fmt: skip
    assert signals.parse_by_label(payload, "pod") == {"a": 1.5}
    with pytest.raises(PrometheusError):
        signals.parse_by_label({"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}, "pod")


def vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {}, "value": [1700000000.0, value]} for value in values]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_parse_values_and_unknowns() -> None:
    assert signals.parse_response(vector("2.5")) == 2.5
    assert signals.parse_response(vector("0")) == 0.0
    assert signals.parse_response(vector()) is None  # no series: unknown, never 0
    assert signals.parse_response(vector("NaN")) is None  # 0/0 with no requests
    assert signals.parse_response(vector("+Inf")) is None
    assert signals.parse_response({"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}}) == 3.0
    bad: Any
    for bad in ({"status": "error", "error": "parse error"}, vector("1", "2"), {"status": "success", "data": {}}, []):
        with pytest.raises(PrometheusError):
            signals.parse_response(bad)


class FakePrometheus(http.server.BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, Any]] = {}
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parsed = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(parsed.query).get("query", [""])[0]
        self.seen.append(f"{parsed.path} {query}")
        code, body = self.answers.get(query, (200, vector()))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    FakePrometheus.answers, FakePrometheus.seen = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_instant_query_over_http(prometheus: str) -> None:
    FakePrometheus.answers = {"up": (200, vector("7")), "bad(": (400, {"status": "error", "error": "parse error"})}
    assert signals.instant_query(prometheus, "up") == 7.0
    assert FakePrometheus.seen == ["/api/v1/query up"]
    assert signals.instant_query(prometheus, "absent") is None
    with pytest.raises(PrometheusError, match="parse error"):
        signals.instant_query(prometheus, "bad(")
    assert signals.known(prometheus, "bad(") is None
    FakePrometheus.answers = {"by": (200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pod": "p1"}, "value": [0, "2"]}]}})}  # fmt: skip
    assert signals.by_pod(prometheus, "by") == {"p1": 2.0}
    assert signals.by_pod(prometheus, "bad(") == {}


def test_unreachable_prometheus_is_unknown() -> None:
    with pytest.raises(PrometheusError, match="cannot query"):
        signals.instant_query("http://127.0.0.1:9", "up", timeout=1)
    assert signals.known("http://127.0.0.1:9", "up") is None
