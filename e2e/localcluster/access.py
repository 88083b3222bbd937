"""How a client on this machine reaches and calls an InferenceService of the local cluster.

Two things every caller needs, in one place (the demo, the full-path test and its load, the
security e2e tests):

* **An address.** :class:`ServiceForwards` relays a host port to a Service's ClusterIP and port
  inside the cluster's network namespace (``realnode.start_forwarder``), so every connection goes
  through kube-proxy as a pod's would and is balanced over the Service's ready endpoints. It is a
  TCP relay: gRPC TLS stays end to end between the client and Triton, and a TLS client names the
  certificate's DNS name with ``grpc.ssl_target_name_override``.
* **The API key.** :func:`api_key` reads the service's ``spec.auth`` and the key from the Secret
  it names, as a client with read access to that Secret would; ``None`` when the service has no
  ``auth``. The key is never written in a manifest or a test: the Secret is the one place.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from localcluster import netns, realnode
from localcluster.handle import MODE_LOCAL, Cluster, ClusterError
from localcluster.kube import Kubectl
from localcluster.lepton import free_port
from lepton_operator.api.inference_security import DEFAULT_HEADER, DEFAULT_SECRET_KEY
from lepton_operator.render.inference_security import grpc_metadata_key


@dataclass(frozen=True)
class ApiKey:
    """An InferenceService's key and the header it goes in (``repr`` leaves the value out)."""

    header: str
    value: str = field(repr=False)

    @property
    def http(self) -> dict[str, str]:
        """Headers for ``tritonclient.http`` calls."""
        return {self.header: self.value}

    @property
    def grpc(self) -> dict[str, str]:
        """Metadata for ``tritonclient.grpc`` calls (Triton prefixes the gRPC key)."""
        return {grpc_metadata_key(self.header): self.value}


def api_key(kubectl: Kubectl, service: str) -> ApiKey | None:
    """The key of InferenceService ``service`` (in ``kubectl``'s namespace) from its Secret; ``None`` without ``auth``."""
    auth = (kubectl.get("inferenceservices", service).get("spec") or {}).get("auth")
    if auth is None:
        return None
    ref = auth["apiKeySecretRef"]
    data = kubectl.get("secret", ref["name"]).get("data") or {}
    key = ref.get("key", DEFAULT_SECRET_KEY)
    if not data.get(key):
        raise ClusterError(f"Secret {ref['name']} has no key {key} for InferenceService {service}'s API key")
    return ApiKey(str(auth.get("header", DEFAULT_HEADER)), base64.b64decode(data[key]).decode())


@dataclass
class ServiceForwards:
    """Host addresses relayed to Services' ports in ``namespace``; :meth:`stop` ends the relays."""

    cluster: Cluster
    namespace: str
    _addresses: dict[tuple[str, int], str] = field(default_factory=dict, init=False)

    def address(self, service: str, port: int) -> str:
        """``127.0.0.1:<host port>``, relayed to ``service``'s ClusterIP and ``port`` (started on first use)."""
        if (service, port) not in self._addresses:
            if self.cluster.mode != MODE_LOCAL:
                raise ClusterError(f"reaching a Service's ClusterIP from here needs the local cluster, not {self.cluster.mode!r}")
            cluster_ip = str(self.cluster.kubectl(self.namespace).get("service", service)["spec"]["clusterIP"])
            host_port = free_port()
            realnode.start_forwarder(netns.instance(), host_port, (cluster_ip, port), name=self._name(service, port))
            self._addresses[(service, port)] = f"127.0.0.1:{host_port}"
        return self._addresses[(service, port)]

    def _name(self, service: str, port: int) -> str:
        return f"service-{self.namespace}-{service}-{port}"

    def stop(self) -> None:
        """Stop every relay started here (the cluster's teardown would sweep them too)."""
        for service, port in self._addresses:
            realnode.stop_process(netns.instance(), self._name(service, port))
        self._addresses.clear()
