"""What ``spec.auth`` and ``spec.tls`` add to the Triton container: flags, env, the TLS volume.

Pure, like ``render.inference``, whose pod template takes :func:`container_security`
as it is. Every fact below was read in Triton's source
(github.com/triton-inference-server/server, ``src/``).

**Access control: Triton's restricted APIs.** ``--http-restricted-api`` and
``--grpc-restricted-protocol`` take ``<categories>:<header>=<value>``
(``command_line_parser.cc``, ``ParseRestrictedFeatureOption``: the value is
everything after the first ``=`` following the first ``:``, so a key may hold
``=`` or ``:``; an empty one is refused at start). A request to a restricted
category without ``<header>: <value>`` is refused: HTTP ``403`` "This API is
restricted, expecting header '<header>'" (``http_server.cc``,
``RespondIfRestricted``), gRPC ``UNAVAILABLE`` "This protocol is restricted,
expecting header 'triton-grpc-protocol-<header>'": over gRPC Triton prefixes the
metadata key (``grpc/grpc_server.h``, ``kRestrictedProtocolHeaderTemplate``).
The categories (``restricted_features.h``) and which we restrict:

- ``health`` stays **open**: it is ``/v2/health/live``, ``/v2/health/ready`` and
  ``/v2/models/<model>/ready`` (``http_server.cc``: ``HandleServerHealth`` and
  ``HandleModelReady`` both check ``RestrictedCategory::HEALTH``), i.e. the
  kubelet's startup, liveness and readiness probes and the activator's probe.
  Knowing that a model is ready tells a caller nothing it could use.
- ``inference`` and ``metadata`` (server and model metadata: names, versions,
  tensor shapes) need the key: they are the model.
- ``model-repository`` (index, load, unload), ``model-config``, ``shared-memory``
  (register regions the server then reads and writes), ``statistics``,
  ``trace`` and ``logging`` (both change server settings at run time) need it
  too: none of them is needed by a client that only infers, and each either
  changes the server or describes the model. Nothing is left unrestricted but
  health.

Model control stays off as well: ``--model-control-mode=none`` (Triton's
default, ``command_line_parser.h``: ``control_mode_{TRITONSERVER_MODEL_CONTROL_NONE}``)
is rendered explicitly, so load and unload fail even with the key (core,
``model_repository_manager.cc``, ``LoadUnloadModel``: ``UNAVAILABLE`` "explicit
model load / unload is not allowed" unless the mode is explicit). A user who
turns it on in ``triton.args`` (they come later, and the last flag wins) still
needs the key for it.

The key reaches Triton only through the environment: ``LEPTON_API_KEY`` from a
``secretKeyRef``, and the flags carry ``$(LEPTON_API_KEY)``, which the kubelet
expands when it starts the container. The pod spec, and so every object and log
the operator writes, holds only the reference. Triton takes the key on its
command line only, so inside the container it is visible to whoever can list
its processes; that is the container's own user.

**gRPC TLS.** ``--grpc-use-ssl=true`` with ``--grpc-server-cert`` and
``--grpc-server-key`` (PEM files); mutual adds ``--grpc-use-ssl-mutual=true``
(which also turns ``use_ssl_`` on) and ``--grpc-root-cert``, the CA client
certificates must chain to (``grpc/grpc_server.cc``: mutual sets
``GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY``; without it the
root is not used, so it is not rendered). Triton reads the files with a plain
read that yields empty text for a missing file, so the controller checks the
Secret's keys before the pod exists. The Secret is mounted read-only at
:data:`TLS_MOUNT`, only the keys used (``items``). The HTTP endpoint has no TLS
option at all (``http_server.cc`` serves plain libevhtp), so the probes, which
are HTTP, are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.api.inference_security import GrpcTLS, InferenceAuth

API_KEY_ENV = "LEPTON_API_KEY"
#: Triton's prefix of the gRPC metadata key (``kRestrictedProtocolHeaderTemplate``).
GRPC_METADATA_PREFIX = "triton-grpc-protocol-"
#: Categories that need the key: every one Triton has (``RESTRICTED_CATEGORY_NAMES``) but ``health``.
KEY_REQUIRED = (
    "inference", "metadata", "model-config", "model-repository", "shared-memory", "statistics", "trace", "logging",
)  # fmt: skip
#: Categories left open: the probes.
OPEN = ("health",)
TLS_VOLUME = "grpc-tls"
TLS_MOUNT = "/lepton/tls"
TLS_SECRET_TYPE = "kubernetes.io/tls"
CERT, KEY, CA = "tls.crt", "tls.key", "ca.crt"


@dataclass(frozen=True)
class RequiredSecret:
    """A Secret the pods need before they can start: its keys and, when it matters, its type."""

    name: str
    keys: tuple[str, ...]
    type: str | None
    field: str
    """The spec field that names it, for messages."""


@dataclass(frozen=True)
class ContainerSecurity:
    """Additions to the Triton container and its pod (all empty when neither auth nor tls is set)."""

    args: list[str] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def grpc_metadata_key(header: str) -> str:
    """The metadata key gRPC clients send the key in."""
    return GRPC_METADATA_PREFIX + header


def restricted_args(auth: InferenceAuth) -> list[str]:
    """Triton's flags that put every category but health behind the key (read from ``$(LEPTON_API_KEY)``)."""
    restriction = f"{','.join(KEY_REQUIRED)}:{auth.header}=$({API_KEY_ENV})"
    return [
        "--model-control-mode=none",
        f"--http-restricted-api={restriction}",
        f"--grpc-restricted-protocol={restriction}",
    ]


def tls_files(tls: GrpcTLS) -> tuple[str, ...]:
    """The Secret's keys Triton reads: certificate and key, and the CA for mutual TLS."""
    return (CERT, KEY, CA) if tls.mutual else (CERT, KEY)


def tls_args(tls: GrpcTLS) -> list[str]:
    """Triton's gRPC SSL flags over the files of the mounted Secret."""
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={TLS_MOUNT}/{CERT}", f"--grpc-server-key={TLS_MOUNT}/{KEY}"]
    if tls.mutual:
        args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={TLS_MOUNT}/{CA}"]
    return args


def container_security(spec: InferenceServiceSpec) -> ContainerSecurity:
    """Flags, env, volumes and mounts for ``spec.auth`` and ``spec.tls``."""
    security = ContainerSecurity()
    if spec.auth is not None:
        ref = spec.auth.api_key_secret_ref
        security.args.extend(restricted_args(spec.auth))
        security.env.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if spec.tls is not None:
        security.args.extend(tls_args(spec.tls))
        items = [{"key": key, "path": key} for key in tls_files(spec.tls)]
        security.volumes.append({"name": TLS_VOLUME, "secret": {"secretName": spec.tls.secret_name, "items": items}})
        security.mounts.append({"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True})
    return security


def required_secrets(spec: InferenceServiceSpec) -> list[RequiredSecret]:
    """The Secrets ``auth`` and ``tls`` name, with the keys (and type) the pods need."""
    required = []
    if spec.auth is not None:
        ref = spec.auth.api_key_secret_ref
        required.append(RequiredSecret(ref.name, (ref.key,), None, "auth.apiKeySecretRef"))
    if spec.tls is not None:
        required.append(RequiredSecret(spec.tls.secret_name, tls_files(spec.tls), TLS_SECRET_TYPE, "tls.secretName"))
    return required
