"""``spec.auth`` and ``spec.tls``: the API's shapes and what they add to the Triton container.

Triton's own rules are restated here from its source (github.com/triton-inference-server/server,
``src/restricted_features.h``, ``src/command_line_parser.cc``, ``src/http_server.cc``), so a
rendering that Triton would read differently fails here first.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import ValidationError

import restricted_policy
from lepton_operator.activator import HOP_BY_HOP, forwarded_headers
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.api.inference_security import RESERVED_HEADERS
from lepton_operator.render import inference
from lepton_operator.render import inference_security as security
from lepton_operator.render.inference import ClaimSource

#: ``RESTRICTED_CATEGORY_NAMES`` in Triton's src/restricted_features.h.
TRITON_CATEGORIES = {"health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
                     "statistics", "trace", "logging"}  # fmt: skip
#: Paths Triton's HTTP server routes to a ``RestrictedCategory::HEALTH`` handler (http_server.cc:
#: ``server_regex_`` ``/v2/health/(live|ready)`` -> HandleServerHealth; ``.../ready`` of a model -> HandleModelReady).
HEALTH_PATH = re.compile(r"^/v2/health/(live|ready)$|^/v2/models/[^/]+(/versions/\d+)?/ready$")
MODEL = {"name": "resnet", "source": {"claim": {"name": "models", "path": "resnet"}}}
AUTH = {"apiKeySecretRef": {"name": "resnet-key", "key": "token"}}
SOURCE = ClaimSource("models", "resnet")


def spec(**fields: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": MODEL, **fields})


def pod(parsed: InferenceServiceSpec) -> dict[str, Any]:
    template: dict[str, Any] = inference.deployment("serve", "ns", "uid-1", parsed, SOURCE, 1)["spec"]["template"]
    return template


def triton(parsed: InferenceServiceSpec) -> dict[str, Any]:
    container: dict[str, Any] = pod(parsed)["spec"]["containers"][0]
    return container


def parse_restriction(flag: str) -> tuple[list[str], str, str]:
    """``ParseRestrictedFeatureOption``/``ParseGenericConfigOption``: the first ':' ends the categories,
    the first '=' after it ends the header; the rest is the value."""
    value = flag.split("=", 1)[1]
    colon = value.index(":")
    equals = value.index("=", colon + 1)
    return value[:colon].split(","), value[colon + 1 : equals], value[equals + 1 :]


def test_defaults_are_the_documented_header_and_secret_key() -> None:
    parsed = spec(auth={"apiKeySecretRef": {"name": "k"}}, tls={"secretName": "t"})
    assert parsed.auth is not None and parsed.tls is not None
    assert (parsed.auth.header, parsed.auth.api_key_secret_ref.key, parsed.tls.mutual) == ("lepton-api-key", "apiKey", False)


def test_auth_puts_every_category_but_health_behind_a_key_read_from_a_secret_key_ref() -> None:
    container = triton(spec(auth=AUTH))
    assert container["env"] == [{"name": "LEPTON_API_KEY", "valueFrom": {"secretKeyRef": {"name": "resnet-key", "key": "token"}}}]
    http = [a for a in container["args"] if a.startswith("--http-restricted-api=")]
    grpc = [a for a in container["args"] if a.startswith("--grpc-restricted-protocol=")]
    assert len(http) == len(grpc) == 1
    for flag in (http[0], grpc[0]):
        categories, header, value = parse_restriction(flag)
        assert set(categories) == TRITON_CATEGORIES - {"health"} and len(categories) == len(set(categories))
        assert (header, value) == ("lepton-api-key", "$(LEPTON_API_KEY)")
    assert "--model-control-mode=none" in container["args"]
    with_user_args = triton(spec(auth=AUTH, triton={"args": ["--log-verbose=1"]}))["args"]
    assert with_user_args[-1] == "--log-verbose=1"  # the user's flags come last, as without auth


def test_every_probe_is_a_health_path_triton_leaves_open() -> None:
    container = triton(spec(auth=AUTH, tls={"secretName": "resnet-tls", "mutual": True}))
    paths = [container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert paths == ["/v2/health/ready", "/v2/models/resnet/ready", "/v2/health/live"]
    assert all(HEALTH_PATH.match(path) for path in paths)
    assert security.OPEN == ("health",) and set(security.KEY_REQUIRED) | set(security.OPEN) == TRITON_CATEGORIES


def test_the_key_travels_only_as_a_reference() -> None:
    """The Secret is named once, in a secretKeyRef; args hold the variable, expanded by the kubelet."""
    rendered = pod(spec(auth=AUTH))
    assert json.dumps(rendered).count('"resnet-key"') == 1
    assert all("value" not in variable for variable in rendered["spec"]["containers"][0]["env"])
    assert all("LEPTON_API_KEY" not in json.dumps(c) for c in rendered["spec"]["initContainers"])


def test_tls_mounts_the_secret_read_only_and_turns_on_grpc_ssl() -> None:
    template = pod(spec(tls={"secretName": "resnet-tls"}))
    container = template["spec"]["containers"][0]
    [volume] = [v for v in template["spec"]["volumes"] if v["name"] == "grpc-tls"]
    assert volume["secret"] == {"secretName": "resnet-tls",
                                "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}  # fmt: skip
    assert {"name": "grpc-tls", "mountPath": "/lepton/tls", "readOnly": True} in container["volumeMounts"]
    assert [a for a in container["args"] if a.startswith("--grpc-use-ssl") or "-cert=" in a or "-key=" in a] == [
        "--grpc-use-ssl=true", "--grpc-server-cert=/lepton/tls/tls.crt", "--grpc-server-key=/lepton/tls/tls.key",
    ]  # fmt: skip
    assert not any(a.startswith("--grpc-root-cert") for a in container["args"])  # unused without mutual
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["stage-model"]
    assert all(m["name"] != "grpc-tls" for m in template["spec"]["initContainers"][0]["volumeMounts"])
    assert restricted_policy.violations(template["spec"]) == []


def test_mutual_tls_requires_client_certificates_signed_by_the_secrets_ca() -> None:
    template = pod(spec(tls={"secretName": "resnet-tls", "mutual": True}))
    [volume] = [v for v in template["spec"]["volumes"] if v["name"] == "grpc-tls"]
    assert [item["key"] for item in volume["secret"]["items"]] == ["tls.crt", "tls.key", "ca.crt"]
    args = template["spec"]["containers"][0]["args"]
    assert "--grpc-use-ssl-mutual=true" in args and "--grpc-root-cert=/lepton/tls/ca.crt" in args


def test_without_auth_or_tls_the_pod_template_is_as_before() -> None:
    """Services that set neither keep their template (and so their pods) across an operator upgrade."""
    container = triton(spec())
    assert "env" not in container
    assert not any("restricted" in a or "ssl" in a or "model-control-mode" in a for a in container["args"])
    assert [v["name"] for v in pod(spec())["spec"]["volumes"]] == ["model-repository", "model-config", "model-source"]
    assert security.required_secrets(spec()) == []


def test_required_secrets_name_the_keys_and_type_the_pods_read() -> None:
    required = security.required_secrets(spec(auth=AUTH, tls={"secretName": "resnet-tls", "mutual": True}))
    assert required == [
        security.RequiredSecret("resnet-key", ("token",), None, "auth.apiKeySecretRef"),
        security.RequiredSecret("resnet-tls", ("tls.crt", "tls.key", "ca.crt"), "kubernetes.io/tls", "tls.secretName"),
    ]


def test_grpc_clients_send_the_key_under_tritons_prefix() -> None:
    assert security.grpc_metadata_key("lepton-api-key") == "triton-grpc-protocol-lepton-api-key"


@pytest.mark.parametrize(
    "header",
    ["X-Api-Key", "api_key", "api:key", "api=key", "-key", "key-", "grpc-key", "key-bin", "connection", "host",
     "content-type", "inference-header-content-length", "k" * 65],
)  # fmt: skip
def test_header_names_that_break_a_parser_or_a_proxy_are_refused(header: str) -> None:
    with pytest.raises(ValidationError):
        spec(auth={**AUTH, "header": header})


def test_every_header_the_activator_drops_is_refused_and_the_default_is_forwarded() -> None:
    assert HOP_BY_HOP <= set(RESERVED_HEADERS)
    assert forwarded_headers({"lepton-api-key": "k", "Content-Type": "application/json"})["lepton-api-key"] == "k"


@pytest.mark.parametrize(
    ("fields", "arg"),
    [({"auth": AUTH}, "--grpc-restricted-protocol=inference:k=v"), ({"tls": {"secretName": "t"}}, "--grpc-root-cert=/x")],
)
def test_triton_args_cannot_override_what_auth_and_tls_render(fields: dict[str, Any], arg: str) -> None:
    with pytest.raises(ValidationError, match="triton.args must not set"):
        spec(**fields, triton={"args": [arg]})
    spec(triton={"args": [arg]})  # without auth/tls the user's flags are theirs


def test_mutual_is_a_property_of_tls_only() -> None:
    with pytest.raises(ValidationError):
        spec(mutual=True)
    with pytest.raises(ValidationError):
        spec(tls={"mutual": True})
