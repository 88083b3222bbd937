"""Triton's signals as PromQL, and reading them from Prometheus' HTTP API.

Which series belong to a service: Triton exports ``model`` (and ``version``)
itself; the scrape adds ``namespace`` and ``service`` (what a ServiceMonitor on
the service's Service produces, and what the e2e harness writes into its
file-based targets). So one service's series are
``{namespace="<ns>", service="<name>", model="<model>"}``.

Each signal is one PromQL expression and says whether it is a total over the
replicas (divided by the ready replicas to get the per-replica value the
policy compares with the target) or already a per-request figure:

- ``pendingRequests``: ``sum(nv_inference_pending_request_count)``, total. The
  only leading signal (requests waiting in Triton now).
- ``concurrency``: Little's law, ``sum(rate(nv_inference_request_duration_us[w])) / 1e6``
  = mean requests inside the servers, total.
- ``queueTimeMicros``: ``sum(rate(queue_duration_us)) / sum(rate(request_success))``,
  mean queue time per request (empty while there are no requests).
- ``rps``: ``sum(rate(nv_inference_request_success[w]))``, total.

Activity (for scale to zero) is requests completed or waiting in the window;
demand (for scale from zero) is requests waiting now: Triton's pending gauge
plus :data:`ACTIVATOR_PENDING`, the requests the activator of a scale-to-zero
service holds while it has no ready replica (``lepton_operator.activator``). At
zero replicas only the activator reports, so the sum falls back to whichever
side has series (``a + b or a or b``); with neither it is unknown. The
activator's pods are scraped like Triton's and so carry ``namespace`` and
``service``; the gauge has no ``model`` label (it holds whatever the clients
send), so its selector is :meth:`Series.service_selector`.

A query that fails, returns no series, or returns NaN/Inf is *unknown*
(``None``), never zero.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lepton_operator.api.inference import Signal

QUERY_TIMEOUT = 5.0
#: The activator's gauge of held requests (exported by ``lepton_operator.activator``).
ACTIVATOR_PENDING = "lepton_activator_pending_requests"


@dataclass(frozen=True)
class Series:
    """Which series one service's replicas export."""

    namespace: str
    service: str
    model: str

    def selector(self) -> str:
        """Triton's series of the service's model."""
        return _selector({"namespace": self.namespace, "service": self.service, "model": self.model})

    def service_selector(self) -> str:
        """Every series of the service (the activator's have no ``model``)."""
        return _selector({"namespace": self.namespace, "service": self.service})


def _selector(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True)
class Query:
    """One signal's expression and whether it is a total over replicas."""

    promql: str
    total: bool


def signal_query(signal: Signal, series: Series, window_seconds: int) -> Query:
    """The PromQL for ``signal`` of one service."""
    sel, window = series.selector(), f"[{window_seconds}s]"
    if signal == "pendingRequests":
        return Query(f"sum(nv_inference_pending_request_count{sel})", total=True)
    if signal == "concurrency":
        return Query(f"sum(rate(nv_inference_request_duration_us{sel}{window})) / 1e6", total=True)
    if signal == "queueTimeMicros":
        return Query(
            f"sum(rate(nv_inference_queue_duration_us{sel}{window}))"
            f" / sum(rate(nv_inference_request_success{sel}{window}))",
            total=False,
        )
    if signal == "rps":
        return Query(f"sum(rate(nv_inference_request_success{sel}{window}))", total=True)
    raise ValueError(f"unknown signal {signal!r}")


def activity_query(series: Series, window_seconds: int) -> str:
    """Requests completed in the window plus those waiting now (> 0: the service is in use)."""
    sel = series.selector()
    return (
        f"sum(increase(nv_inference_request_success{sel}[{window_seconds}s]))"
        f" + sum(nv_inference_pending_request_count{sel})"
    )


def demand_query(series: Series) -> str:
    """Requests waiting now: in Triton over all replicas plus those the activator holds (either alone without the other)."""
    triton = f"sum(nv_inference_pending_request_count{series.selector()})"
    held = f"sum({ACTIVATOR_PENDING}{series.service_selector()})"
    return f"({triton} + {held}) or {triton} or {held}"


def load_by_pod_query(series: Series, window_seconds: int) -> str:
    """Each replica's load: requests in its server (Little's law) plus those waiting, by ``pod``."""
    sel = series.selector()
    return (
        f"sum by (pod) (rate(nv_inference_request_duration_us{sel}[{window_seconds}s])) / 1e6"
        f" + sum by (pod) (nv_inference_pending_request_count{sel})"
    )


class PrometheusError(Exception):
    """The query failed (unreachable, HTTP error, error status, unexpected shape)."""


def _data(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("status") != "success":
        error = payload.get("error") if isinstance(payload, dict) else payload
        raise PrometheusError(f"query failed: {error}")
    data: dict[str, Any] = payload.get("data") or {}
    return data


def _number(sample: Any) -> float | None:
    try:
        value = float(sample[1])
    except (TypeError, ValueError, IndexError) as error:
        raise PrometheusError(f"unreadable sample {sample!r}") from error
    return value if math.isfinite(value) else None


def parse_by_label(payload: Any, label: str) -> dict[str, float]:
    """A vector response as ``{series[label]: value}``, leaving out NaN/Inf and unlabelled series."""
    data = _data(payload)
    if data.get("resultType") != "vector":
        raise PrometheusError(f"expected a vector, got {data.get('resultType')!r}")
    values = {}
    for series in data.get("result") or []:
        key = (series.get("metric") or {}).get(label)
        value = _number(series.get("value"))
        if key is not None and value is not None:
            values[str(key)] = value
    return values


def parse_response(payload: Any) -> float | None:
    """The scalar of an instant-query response: ``None`` for no series or NaN/Inf; raises on errors."""
    data = _data(payload)
    kind, result = data.get("resultType"), data.get("result")
    sample: Any
    if kind == "scalar":
        sample = result
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"expected one series, got {len(result)}")
        sample = result[0].get("value")
    else:
        raise PrometheusError(f"unexpected result type {kind!r}")
    return _number(sample)


def _fetch(base_url: str, promql: str, timeout: float) -> Any:
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) from the spec
            payload = json.loads(response.read())
    except urllib.error.HTTPError as error:  # Prometheus answers 400/422 with a JSON error body
        try:
            payload = json.loads(error.read())
        except ValueError:
            raise PrometheusError(f"HTTP {error.code} from {base_url}") from error
    except (OSError, ValueError) as error:
        raise PrometheusError(f"cannot query {base_url}: {error}") from error
    return payload


def instant_query(base_url: str, promql: str, timeout: float = QUERY_TIMEOUT) -> float | None:
    """Evaluate ``promql`` now on the Prometheus at ``base_url``; see :func:`parse_response`."""
    return parse_response(_fetch(base_url, promql, timeout))


def by_pod(base_url: str, promql: str, timeout: float = QUERY_TIMEOUT) -> dict[str, float]:
    """Evaluate a ``by (pod)`` query; empty when it fails (the caller then has no preference)."""
    try:
        return parse_by_label(_fetch(base_url, promql, timeout), "pod")
    except PrometheusError:
        return {}


def known(base_url: str, promql: str, query: Callable[[str, str], float | None] | None = None) -> float | None:
    """``query`` (:func:`instant_query` by default), with a failed query read as unknown (the policy holds on unknown)."""
    try:
        return (query or instant_query)(base_url, promql)
    except PrometheusError:
        return None
