"""An InferenceService's access control (``spec.auth``) and gRPC encryption (``spec.tls``).

Both are enforced by Triton itself, not by a proxy of ours: ``auth`` becomes
Triton's restricted APIs (``--http-restricted-api`` and
``--grpc-restricted-protocol``, a header and the value it must carry), ``tls``
its gRPC SSL options. ``render.inference_security`` says which API categories
need the key and why; here are only the shapes users write, and the rules that
keep a spec from asking Triton for something it would refuse at start.

The key and the TLS material are named by reference only. Their values never
appear in the spec, and the operator passes them to Triton by ``secretKeyRef``
and by a Secret volume: nothing it writes (args, annotations, status, events,
logs) holds them.

The header name is held to a narrow shape, because one name serves three
parsers: an HTTP header (Triton's HTTP endpoint, and whatever proxy sits in
front), a gRPC metadata key (lowercase; ``-bin`` suffixed keys are binary,
``grpc-`` prefixed ones reserved) and Triton's flag syntax
(``<apis>:<header>=<value>``, so no ``:`` or ``=``). Names a proxy drops or
rewrites on the way (the hop-by-hop headers the activator and every HTTP proxy
strip; ``nginx`` drops names with ``_``) and the names that already mean
something in Triton's protocol are refused too.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import StringConstraints

from lepton_operator.api.common import ApiModel, ObjectName, Rule

DEFAULT_HEADER = "lepton-api-key"
DEFAULT_SECRET_KEY = "apiKey"
#: Headers a client cannot carry a key in: hop-by-hop ones (RFC 9110 7.6.1; the activator and
#: every HTTP proxy drop them) and those that already mean something in Triton's HTTP protocol.
RESERVED_HEADERS = (
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect",
    "content-type", "content-encoding", "accept-encoding", "inference-header-content-length",
)  # fmt: skip
# Lowercase letters, digits and inner dashes: an HTTP token, a gRPC metadata key, no ':' or '='.
HeaderName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$")]
SecretKey = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


class ApiKeySecretRef(ApiModel):
    """The Secret key that holds the API key (in this namespace)."""

    name: ObjectName
    """Name of the Secret."""
    key: SecretKey = DEFAULT_SECRET_KEY
    """Key in the Secret whose value is the API key.
Clients send exactly this value: store it without a trailing newline (kubectl create secret generic --from-literal=apiKey=...)."""


class InferenceAuth(ApiModel):
    """Who may call the model: only clients that send the API key in a header.

    Triton enforces it (--http-restricted-api, --grpc-restricted-protocol).
    Inference, model and server metadata, model configuration, the model
    repository (load/unload), statistics, trace, logging and shared memory
    need the key; health and readiness (/v2/health/*, /v2/models/<model>/ready)
    stay open for the kubelet's probes. Without the key Triton answers HTTP 403,
    and gRPC UNAVAILABLE "This protocol is restricted". Metrics (port 8002) are
    not covered: limit who reaches them with a NetworkPolicy.
    """

    api_key_secret_ref: ApiKeySecretRef
    """The Secret key holding the API key; its value reaches Triton only by secretKeyRef.
The service waits (ModelAvailable False: SecretNotFound, SecretKeyMissing) until it exists."""
    header: HeaderName = DEFAULT_HEADER
    """Name of the header that carries the key: lowercase letters, digits and '-'.
Over HTTP clients send this header; over gRPC the metadata key triton-grpc-protocol-<header> (Triton adds that prefix)."""

    __rules__ = (
        Rule(
            "!self.header.endsWith('-bin') && !self.header.startsWith('grpc-')",
            "auth.header must not end with -bin (a binary gRPC key) nor start with grpc- (reserved by gRPC)",
            lambda a: not a.header.endswith("-bin") and not a.header.startswith("grpc-"),
            ".header",
        ),
        Rule(
            f"!(self.header in {_cel_list(RESERVED_HEADERS)})",
            "auth.header must not be a hop-by-hop header proxies drop or a header of Triton's protocol"
            f" ({', '.join(RESERVED_HEADERS)})",
            lambda a: a.header not in RESERVED_HEADERS,
            ".header",
        ),
    )


class GrpcTLS(ApiModel):
    """TLS on Triton's gRPC endpoint (port 8001), from a kubernetes.io/tls Secret.

    cert-manager's Certificate writes this kind of Secret: tls.crt (the server
    certificate, chain first), tls.key, and ca.crt (the issuing CA). The
    certificate must name the address clients dial (<name>.<namespace>.svc,
    and <name> or an external name). Triton reads the files at start: a renewed
    certificate is served once the pods restart. Triton's HTTP endpoint (8000)
    has no TLS: terminate TLS in front of it (an ingress, a gateway, a mesh).
    """

    secret_name: ObjectName
    """Name of the kubernetes.io/tls Secret in this namespace.
The service waits (ModelAvailable False) until it exists with tls.crt and tls.key (and ca.crt when mutual)."""
    mutual: bool = False
    """Require client certificates (mutual TLS): clients must present a certificate signed by the Secret's ca.crt."""


AUTH_FLAGS = ("--http-restricted-api", "--grpc-restricted-protocol")
TLS_FLAGS = ("--grpc-use-ssl", "--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert")


def _args_rule(field: str, flags: tuple[str, ...]) -> Rule:
    """``spec.<field>`` renders ``flags``: ``triton.args`` must not give them again (Triton refuses or overrides)."""
    starts = " || ".join(f"a.startsWith('{flag}')" for flag in flags)

    def holds(spec: Any) -> bool:
        args: list[str] = spec.triton.args or []
        return getattr(spec, field) is None or not any(arg.startswith(flags) for arg in args)

    return Rule(
        f"!has(self.{field}) || !has(self.triton) || !has(self.triton.args) || !self.triton.args.exists(a, {starts})",
        f"triton.args must not set {', '.join(flags)} when {field} is set: the operator renders them from {field}",
        holds,
        ".triton.args",
    )


AUTH_ARGS_RULE = _args_rule("auth", AUTH_FLAGS)
TLS_ARGS_RULE = _args_rule("tls", TLS_FLAGS)
