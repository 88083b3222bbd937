"""Triton's restricted APIs: the flags, which category a request belongs to, and the refusal.

Triton guards groups of endpoints ("categories") with a header that must carry
a given value. The Triton-protocol simulator (``triton_simulator``) enforces
them exactly as Triton does, over HTTP (``triton_http``) and gRPC
(``triton_grpc``); this module is the one place that knows how. Pure: no I/O,
no server types; the servers hand in a header lookup.

Followed from triton-inference-server/server (commit e1db8a6):

- ``src/restricted_features.h``: the categories, in :data:`CATEGORIES`.
- ``src/command_line_parser.cc``: ``--http-restricted-api=<apis>:<key>=<value>``
  and ``--grpc-restricted-protocol=<protocols>:<key>=<value>``, each repeatable.
  ``ParseGenericConfigOption`` splits at the first ``:`` and the first ``=``
  after it (the value may hold ``:`` and ``=``; an empty part is an error);
  ``ParseRestrictedFeatureOption`` splits the list at ``,``, refuses an unknown
  category and a category named in two flags, and prefixes the gRPC key with
  ``kRestrictedProtocolHeaderTemplate`` = ``triton-grpc-protocol-``
  (``src/grpc/grpc_server.h``). The error texts in :func:`parse` are Triton's.
- ``src/http_server.cc``: ``HTTPAPIServer::Handle`` dispatches a path by the
  regexes in :func:`http_route`; every handler checks its category *before*
  the method (``RETURN_AND_RESPOND_IF_RESTRICTED``), and ``RespondIfRestricted``
  answers ``403`` with ``{"error": "This API is restricted, expecting header
  '<key>'"}`` when the header is missing or its value differs. The header name
  is looked up case-insensitively (libevhtp's ``evhtp_kv_find``: ``strcasecmp``),
  the value compared exactly. A path no regex matches is ``404`` ``Not Found``,
  whatever the headers.
- ``src/grpc/grpc_server.cc`` (``CommonCallData::ExecutePrecondition``) and
  ``src/grpc/infer_handler.cc`` (ModelInfer, ModelStreamInfer): the metadata
  key must be present with exactly the value, else status ``UNAVAILABLE``,
  ``This protocol is restricted, expecting header 'triton-grpc-protocol-<key>'``.
  The gRPC lookup is an exact key match in the client metadata (gRPC keys are
  lower case on the wire, so a key with capitals can never match, in Triton
  as here). The RPC -> category table is :data:`GRPC_CATEGORIES`.

The metrics port is not behind any of this, in Triton as here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: ``RESTRICTED_CATEGORY_NAMES`` in Triton's ``restricted_features.h``.
CATEGORIES = (
    "health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
    "statistics", "trace", "logging",
)  # fmt: skip
#: ``kRestrictedProtocolHeaderTemplate`` (``src/grpc/grpc_server.h``).
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
HTTP_FLAG, GRPC_FLAG = "http-restricted-api", "grpc-restricted-protocol"
#: What Triton answers a request without the right header.
HTTP_REFUSED_STATUS = 403
GRPC_REFUSED_CODE = "UNAVAILABLE"


@dataclass(frozen=True)
class Restriction:
    """The header a category needs, and its value."""

    header: str
    value: str


Restrictions = Mapping[str, Restriction]
"""Category -> its restriction; a category absent is open."""


def parse(flag_values: Sequence[str], option: str, key_prefix: str, feature_type: str) -> dict[str, Restriction]:
    """Triton's ``ParseRestrictedFeatureOption`` over every occurrence of one flag; ``ValueError`` as Triton's."""
    restrictions: dict[str, Restriction] = {}
    for arg in flag_values:
        names, colon, rest = arg.partition(":")
        key, equals, value = rest.partition("=")
        if not (colon and equals and names and key and value):
            raise ValueError(f"--{option} option format is '<config name>:<setting>=<value>'. Got {arg}")
        for feature in names.split(","):
            if feature not in CATEGORIES:
                raise ValueError(f"unknown restricted {feature_type} '{feature}' ")
            if feature in restrictions:
                raise ValueError(f"restricted {feature_type} '{feature}' can not be specified in multiple config groups")
            restrictions[feature] = Restriction(key_prefix + key, value)
    return restrictions


def parse_http(flag_values: Sequence[str]) -> dict[str, Restriction]:
    """``--http-restricted-api`` values -> restrictions (header names as given)."""
    return parse(flag_values, HTTP_FLAG, "", "api")


def parse_grpc(flag_values: Sequence[str]) -> dict[str, Restriction]:
    """``--grpc-restricted-protocol`` values -> restrictions (metadata keys ``triton-grpc-protocol-<key>``)."""
    return parse(flag_values, GRPC_FLAG, GRPC_HEADER_PREFIX, "protocol")


def unmet(restrictions: Restrictions, category: str, lookup: Callable[[str], str | None]) -> Restriction | None:
    """The restriction a request fails (``lookup(header)`` gives its value or None), or None when it may pass."""
    restriction = restrictions.get(category)
    if restriction is None or lookup(restriction.header) == restriction.value:
        return None
    return restriction


def http_refusal(restriction: Restriction) -> str:
    return f"This API is restricted, expecting header '{restriction.header}'"


def grpc_refusal(restriction: Restriction) -> str:
    return f"This protocol is restricted, expecting header '{restriction.header}'"


@dataclass(frozen=True)
class HttpRoute:
    """Which of Triton's HTTP handlers a path reaches, and its category.

    ``endpoint`` names the handler (``infer``, ``model_ready``, ``model_metadata``,
    ``model_config``, ``model_stats``, ``model_trace``, ``server_metadata``,
    ``server_health``, ``shared_memory``, ``repository_index``,
    ``repository_control``, ``trace``, ``logging``, ``stats``, ``generate``);
    ``detail`` is ``live``/``ready`` for health and ``load``/``unload`` for
    repository control.
    """

    category: str
    endpoint: str
    model: str = ""
    version: str = ""
    detail: str = ""


_MODEL = re.compile(
    r"/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(infer|generate|generate_stream|ready|config|stats|trace/setting))?"
)
_SERVER = re.compile(r"/v2(?:/health/(live|ready))?")
_SHARED_MEMORY = re.compile(r"/v2/(?:system|cuda)sharedmemory(?:/region/([^/]+))?/(status|register|unregister)")
_REPOSITORY = re.compile(r"/v2/repository(?:/([^/]+))?/(index|models/([^/]+)/(load|unload))")
#: Model path kind -> (endpoint, category), as ``HTTPAPIServer::Handle`` dispatches them.
_MODEL_KINDS = {
    "": ("model_metadata", "metadata"), "ready": ("model_ready", "health"), "infer": ("infer", "inference"),
    "generate": ("generate", "inference"), "generate_stream": ("generate", "inference"),
    "config": ("model_config", "model-config"), "stats": ("model_stats", "statistics"),
    "trace/setting": ("model_trace", "trace"),
}  # fmt: skip


def http_route(path: str) -> HttpRoute | None:
    """The handler Triton dispatches ``path`` (no query) to, or None: Triton's ``404 Not Found``."""
    if path == "/v2/models/stats":
        return HttpRoute("statistics", "stats")
    if path == "/v2/logging":
        return HttpRoute("logging", "logging")
    if found := _MODEL.fullmatch(path):
        model, version, kind = found.group(1), found.group(2) or "", found.group(3) or ""
        if not (kind == "trace/setting" and version):  # a versioned trace path falls through, as in Triton
            endpoint, category = _MODEL_KINDS[kind]
            return HttpRoute(category, endpoint, model, version)
    if path == "/v2":
        return HttpRoute("metadata", "server_metadata")
    if found := _SERVER.fullmatch(path):
        return HttpRoute("health", "server_health", detail=found.group(1))
    if _SHARED_MEMORY.fullmatch(path):
        return HttpRoute("shared-memory", "shared_memory")
    if found := _REPOSITORY.fullmatch(path):
        if found.group(2) == "index":
            return HttpRoute("model-repository", "repository_index")
        return HttpRoute("model-repository", "repository_control", found.group(3), detail=found.group(4))
    if path == "/v2/trace/setting":
        return HttpRoute("trace", "trace")
    return None


#: gRPC method of ``inference.GRPCInferenceService`` (and the standard health check) -> category,
#: as ``src/grpc/grpc_server.cc`` registers them.
GRPC_CATEGORIES = {
    "ServerLive": "health", "ServerReady": "health", "ModelReady": "health", "Check": "health",
    "ServerMetadata": "metadata", "ModelMetadata": "metadata",
    "ModelInfer": "inference", "ModelStreamInfer": "inference",
    "ModelConfig": "model-config", "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository", "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory", "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory", "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory", "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace", "LogSettings": "logging",
}  # fmt: skip
