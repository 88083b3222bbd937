"""A protected InferenceService on real pods: Triton's restricted APIs behind an API key, gRPC TLS.

The in-cluster operator (``incluster_operator``) serves a namespace whose pods run on the local
cluster's real node. An InferenceService with ``spec.auth`` (the key from a Secret) and
``spec.tls`` (a ``kubernetes.io/tls`` Secret from a CA this test makes with ``openssl``) is
served by Triton-protocol simulator pods (the image built here, under the ``tritonserver``
command line the operator renders), staging ``served_model``'s ``double`` from an HTTP server in
the namespace. Clients on this machine call it through the Service's ClusterIP
(``access.ServiceForwards``; a TCP relay, so TLS is end to end and the client names the
certificate's DNS name with ``grpc.ssl_target_name_override``), with ``tritonclient``:

* with the key (read from the Secret by ``access.api_key``), HTTP and gRPC are served ``2x + 1``;
  without it, or with a wrong one, HTTP is ``403`` and gRPC ``UNAVAILABLE`` with Triton's
  messages, while health stays open and the kubelet keeps the pods Ready;
* gRPC needs TLS: a plaintext client and a client that does not trust the CA fail; with
  ``mutual: true`` a client without a certificate fails, one with a certificate is served;
* its NetworkPolicy admits the namespace's pods on HTTP and gRPC and refuses another
  namespace's; metrics only from the monitoring namespace (``pod_connections``, real pods);
* the key's value is in no pod, Deployment, ReplicaSet, status, event or operator log;
* rotating the key (a new value in the Secret) rolls the replicas: once rolled out the new key
  is served and the old one refused.

The tests share one service (starting replicas is the slow part) and run in file order: the
mutual-TLS and rotation tests change it last.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from tritonclient.utils import InferenceServerException

from incluster_fixtures import NAMESPACE_PREFIX, InClusterOperator
from localcluster import monitoring, realnode
from localcluster.access import ApiKey, ServiceForwards, api_key
from localcluster.certificates import Certificates, make_certificates, tls_secret
from localcluster.cluster import Cluster
from localcluster.images import Image
from localcluster.kube import Kubectl, condition_true, wait_until
from localcluster.served_model import MODEL, inference_service, key_secret, model_configmap, model_server
from localcluster.serving import infer
from lepton_operator.render.inference import GRPC_PORT, HTTP_PORT, METRICS_PORT
from pod_connections import connects, refused, start_client

pytestmark = pytest.mark.e2e

SERVICE = "guarded"
KEY_SECRET, TLS_SECRET = "guarded-key", "guarded-tls"
TIMEOUT = 300.0
BATCH = np.arange(8, dtype=np.float32).reshape(2, 4)
HTTP_REFUSED = "This API is restricted, expecting header 'lepton-api-key'"
GRPC_REFUSED = "This protocol is restricted, expecting header 'triton-grpc-protocol-lepton-api-key'"


def guarded_service(simulator: str, *, mutual: bool) -> dict[str, Any]:
    return inference_service(SERVICE, simulator, key=KEY_SECRET, tls=TLS_SECRET, mutual=mutual)


@dataclass
class Guarded:
    """The protected service in its namespace, and how this machine reaches it."""

    kubectl: Kubectl
    namespace: str
    forwards: ServiceForwards
    certificates: Certificates
    simulator: str
    node: str | None  # the real node

    @property
    def server_name(self) -> str:
        return f"{SERVICE}.{self.namespace}.svc"

    def key(self) -> ApiKey:
        key = api_key(self.kubectl, SERVICE)
        assert key is not None
        return key

    def infer_http(self, headers: dict[str, str] | None) -> Any:
        return infer(self.forwards.address(SERVICE, HTTP_PORT), MODEL, BATCH, timeout=30, headers=headers)

    def grpc(self, *, ssl: bool = True, trust: bool = True, certificate: bool = False) -> grpc_client.InferenceServerClient:
        """A gRPC client through the Service: TLS trusting the test's CA, optionally with the client certificate."""
        files = self.certificates
        return grpc_client.InferenceServerClient(
            self.forwards.address(SERVICE, GRPC_PORT), ssl=ssl,
            root_certificates=str(files.ca) if trust else None,
            private_key=str(files.client_key) if certificate else None,
            certificate_chain=str(files.client_cert) if certificate else None,
            channel_args=[("grpc.ssl_target_name_override", self.server_name)],
        )  # fmt: skip

    def infer_grpc(self, client: grpc_client.InferenceServerClient, headers: dict[str, str] | None) -> Any:
        given = grpc_client.InferInput("INPUT__0", list(BATCH.shape), "FP32")
        given.set_data_from_numpy(BATCH)
        try:
            return client.infer(MODEL, [given], headers=headers, client_timeout=30).as_numpy("OUTPUT__0")
        finally:
            client.close()

    def server_pods(self) -> list[dict[str, Any]]:
        return list(self.kubectl.get("pods", None, "-l", f"lepton.ai/inferenceservice={SERVICE},lepton.ai/role=server"))

    def rolled_out(self, changed: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Wait until the operator has applied a template ``changed`` says is new, then for its rollout and Ready."""
        wait_until(lambda: changed(self.kubectl.get("deployment", SERVICE)["spec"]["template"]), 60, what)
        self.kubectl("rollout", "status", f"deployment/{SERVICE}", f"--timeout={TIMEOUT:.0f}s", timeout=TIMEOUT + 10)
        wait_until(lambda: len(self.server_pods()) == 1, TIMEOUT, "the old replica gone")
        self.ready()

    def ready(self) -> dict[str, Any]:
        def current() -> dict[str, Any] | None:
            found = self.kubectl.get_or_none("inferenceservices", SERVICE) or {}
            return found if condition_true(found, "Ready") and (found.get("status") or {}).get("readyReplicas") == 1 else None

        found: dict[str, Any] = wait_until(current, TIMEOUT, f"InferenceService {SERVICE} Ready")
        return found


@pytest.fixture(scope="module")
def guarded(cluster: Cluster, cluster_kubectl: Kubectl, built_images: dict[str, Image],
            incluster_operator: InClusterOperator) -> Iterator[Guarded]:  # fmt: skip
    namespace = f"{NAMESPACE_PREFIX}isvc-security-{uuid.uuid4().hex[:6]}"  # the in-cluster operator's, on the real node
    cluster_kubectl.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubectl = cluster_kubectl.in_namespace(namespace)
    forwards = ServiceForwards(cluster, namespace)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            wait_until(lambda: kubectl.get_or_none("serviceaccount", "default"), 30, "the namespace's ServiceAccount")
            names = [f"DNS:{SERVICE}.{namespace}.svc", f"DNS:{SERVICE}.{namespace}.svc.cluster.local"]
            certificates = make_certificates(Path(scratch), names)
            simulator = built_images["triton-simulator"].ref
            kubectl.apply(model_configmap())
            kubectl.apply(model_server(built_images["workloads"].ref))
            kubectl.apply(key_secret(KEY_SECRET, secrets.token_hex(16)))
            kubectl.apply(tls_secret(TLS_SECRET, certificates))
            kubectl.apply(guarded_service(simulator, mutual=False), "--server-side")
            service = Guarded(kubectl, namespace, forwards, certificates, simulator, cluster.real_node)
            service.ready()
            yield service
        finally:
            forwards.stop()
            cluster_kubectl.delete("namespace", namespace)


def refusal(call: Callable[[], Any]) -> tuple[str | None, str]:
    """The status and message ``call`` was refused with (it must raise tritonclient's exception)."""
    with pytest.raises(InferenceServerException) as refused:
        call()
    return refused.value.status(), refused.value.message()


def test_the_key_serves_http_and_grpc_and_no_key_or_a_wrong_one_is_refused_while_health_stays_open(
    guarded: Guarded,
) -> None:
    key = guarded.key()
    expected = BATCH * 2 + 1
    assert np.array_equal(guarded.infer_http(key.http), expected)
    assert np.array_equal(guarded.infer_grpc(guarded.grpc(), key.grpc), expected)

    wrong = ApiKey(key.header, key.value + "x")
    for headers in (None, wrong.http, key.grpc):  # the gRPC key's name is not the HTTP header's
        assert refusal(lambda: guarded.infer_http(headers)) == ("403", HTTP_REFUSED)  # noqa: B023
    for headers in (None, wrong.grpc, key.http):  # nor the other way round: Triton prefixes gRPC keys
        assert refusal(lambda: guarded.infer_grpc(guarded.grpc(), headers)) == ("StatusCode.UNAVAILABLE", GRPC_REFUSED)  # noqa: B023

    # Health stays open: the probes (and any caller) see the model ready without a key.
    client = http_client.InferenceServerClient(guarded.forwards.address(SERVICE, HTTP_PORT))
    try:
        assert client.is_server_live() and client.is_model_ready(MODEL)
    finally:
        client.close()
    [pod] = guarded.server_pods()
    assert condition_true(pod, "Ready") and pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert pod["spec"]["nodeName"] == guarded.node


def test_grpc_needs_tls_and_the_ca(guarded: Guarded) -> None:
    key = guarded.key()
    assert refusal(lambda: guarded.infer_grpc(guarded.grpc(ssl=False), key.grpc))[0] == "StatusCode.UNAVAILABLE"
    assert refusal(lambda: guarded.infer_grpc(guarded.grpc(trust=False), key.grpc))[0] == "StatusCode.UNAVAILABLE"
    assert np.array_equal(guarded.infer_grpc(guarded.grpc(), key.grpc), BATCH * 2 + 1)  # the same call, trusting the CA


def test_its_pods_accept_the_namespace_on_http_and_grpc_and_only_monitoring_on_metrics(
    guarded: Guarded, cluster_kubectl: Kubectl
) -> None:
    """The service's NetworkPolicy (``render.network``), enforced: one TCP connection per check, from real pods."""
    [pod] = guarded.server_pods()
    ip = pod["status"]["podIP"]
    other = f"{guarded.namespace}-other"
    scraper = f"scraper-{uuid.uuid4().hex[:6]}"
    cluster_kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": monitoring.NAMESPACE}})
    cluster_kubectl.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    clients = {"neighbour": guarded.kubectl, "outsider": cluster_kubectl.in_namespace(other),
               scraper: cluster_kubectl.in_namespace(monitoring.NAMESPACE)}  # fmt: skip
    try:
        for name, kubectl in clients.items():
            start_client(kubectl, name, realnode.BUSYBOX_REF)
        neighbour, outsider, scrapes = clients["neighbour"], clients["outsider"], clients[scraper]
        assert connects(neighbour, "neighbour", ip, HTTP_PORT) and connects(neighbour, "neighbour", ip, GRPC_PORT)
        print(f"\nanother namespace -> gRPC: {refused(outsider, 'outsider', ip, GRPC_PORT)}")
        for port in (HTTP_PORT, METRICS_PORT):
            refused(outsider, "outsider", ip, port)
        refused(neighbour, "neighbour", ip, METRICS_PORT)
        assert connects(scrapes, scraper, ip, METRICS_PORT), "the monitoring namespace scrapes Triton's metrics"
        refused(scrapes, scraper, ip, HTTP_PORT)
    finally:
        clients[scraper].run("delete", "pod", scraper, "--ignore-not-found", "--wait=false", check=False)
        cluster_kubectl.run("delete", "namespace", other, "--ignore-not-found", "--wait=false", check=False)


def test_the_key_is_in_no_object_status_event_or_log(guarded: Guarded, incluster_operator: InClusterOperator) -> None:
    key = guarded.key()
    kubectl = guarded.kubectl
    objects = {kind: kubectl.get(kind) for kind in ("pods", "deployments", "replicasets", "events", "configmaps", "services")}
    objects["inferenceservice"] = kubectl.get("inferenceservices", SERVICE)
    logs = "".join(incluster_operator.logs(p["metadata"]["name"]) for p in incluster_operator.pods())
    [pod] = guarded.server_pods()
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["LEPTON_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": KEY_SECRET, "key": "apiKey"}  # a reference
    assert "$(LEPTON_API_KEY)" in " ".join(pod["spec"]["containers"][0]["args"])
    assert objects["events"] and logs.strip()  # what is searched is there
    for where, text in [*((kind, json.dumps(found)) for kind, found in objects.items()), ("operator logs", logs)]:
        assert key.value not in text, where


def test_mutual_tls_serves_only_clients_with_a_certificate(guarded: Guarded) -> None:
    guarded.kubectl.apply(guarded_service(guarded.simulator, mutual=True), "--server-side")
    guarded.rolled_out(lambda template: "--grpc-use-ssl-mutual=true" in template["spec"]["containers"][0]["args"],
                       "the mutual TLS template")  # fmt: skip
    key = guarded.key()
    assert refusal(lambda: guarded.infer_grpc(guarded.grpc(), key.grpc))[0] == "StatusCode.UNAVAILABLE"
    assert np.array_equal(guarded.infer_grpc(guarded.grpc(certificate=True), key.grpc), BATCH * 2 + 1)


def test_rotating_the_key_rolls_the_replicas_onto_the_new_one(guarded: Guarded) -> None:
    old = guarded.key()
    before = guarded.kubectl.get("deployment", SERVICE)["spec"]["template"]["metadata"]["annotations"]
    guarded.kubectl.apply(key_secret(KEY_SECRET, secrets.token_hex(16)))
    new = guarded.key()
    assert new.value != old.value
    guarded.rolled_out(lambda template: template["metadata"]["annotations"] != before, "a template for the new key")
    assert new.value not in json.dumps(guarded.kubectl.get("deployment", SERVICE))  # a version, never the value
    assert np.array_equal(guarded.infer_http(new.http), BATCH * 2 + 1)
    assert np.array_equal(guarded.infer_grpc(guarded.grpc(certificate=True), new.grpc), BATCH * 2 + 1)
    assert refusal(lambda: guarded.infer_http(old.http)) == ("403", HTTP_REFUSED)
    assert refusal(lambda: guarded.infer_grpc(guarded.grpc(certificate=True), old.grpc))[1] == GRPC_REFUSED
