"""Sources over TLS with a custom CA (``caBundle``), on real pods: the preparer and the stager verify for real.

The in-cluster operator (``incluster_operator``) serves a namespace whose pods run on the local
cluster's real node. In it a pod of the workloads image serves a ConfigMap's files over HTTPS
(``served_model.model_server`` with a ``kubernetes.io/tls`` Secret): the ``double`` model and a
40-record jsonl corpus, under a server certificate for the Service's DNS names
(``model-files.<namespace>.svc``) signed by a CA this test makes (``localcluster.certificates``).
The CA is in the ConfigMap ``source-ca``; ``other-ca`` holds another CA that signed a certificate
for the same names, which the server does not use. Nothing here is simulated: the real preparer
(a Job) and the real stager (the replica's init container) fetch over the pod network, through
the cluster's DNS and Service, and verify the chain and host name with ``ssl``.

* A LeptonDataset with an ``https://`` source and ``caBundle: source-ca`` is Ready with the 40
  records in their shards. Pointed at ``other-ca`` (a new preparation: the source changed), it is
  Failed with ``SourceTLSError`` and a message naming the certificate problem and the bundle file,
  and the shards prepared before are still on the claim, byte for byte (``manifest.json``).
* The same source without ``caBundle`` is Failed with ``SourceTLSError``, the message saying only
  the system roots were trusted: so the first dataset was Ready because of the bundle.
* A ``caBundle`` naming a ConfigMap that does not exist yet leaves the dataset Pending with
  ``ConfigMapNotFound`` and no prepare Job; the ConfigMap without the key is
  ``ConfigMapKeyMissing``; with the key, it prepares.
* An InferenceService whose model ``uri`` is that server's ``https://`` URL, without ``caBundle``:
  its replica's stager ends with ``SourceTLSError`` in its termination message and the service is
  not Ready. The same service given ``caBundle`` (one apply, a new template) stages the model and
  is Ready, so its Triton (the simulator) loaded what the stager fetched over TLS.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from incluster_fixtures import NAMESPACE_PREFIX, InClusterOperator
from localcluster.certificates import make_certificates, tls_secret
from localcluster.cluster import Cluster
from localcluster.images import Image
from localcluster.kube import Kubectl, condition, condition_true, wait_until
from localcluster.quickstart import read_claim
from lepton_operator.render.common import SOURCE_CA_FILE, SOURCE_CA_FILE_ENV, SOURCE_CA_MOUNT
from lepton_operator.render.inference import STAGER
from lepton_workloads.source_tls import TLS_REASON
from localcluster.served_model import SERVER, file_url, model_configmap, model_server, model_spec, model_uri, server_names

pytestmark = pytest.mark.e2e

TIMEOUT = 240.0  # a pod of the workloads image on the shared 2-core machine
FILES, SERVER_TLS = "source-files", "source-tls"
TRUSTED_CA, OTHER_CA = "source-ca", "other-ca"
CORPUS, RECORDS, SHARDS = "corpus.jsonl", 40, 4
#: 10 records a shard: the 36 of the default train split (0.9) in 4, the validation split's 4 in its own.
PREPARED_SHARDS = 5
SERVICE = "tls-model"
CERTIFICATE_FAILED = "certificate verify failed: "
SYSTEM_ROOTS_ONLY = "(trusted: the system roots only; a source signed by a private CA needs caBundle)"


def ca_configmap(name: str, pem: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"ca.crt": pem}}


def ca_bundle(configmap: str | None) -> dict[str, Any]:
    """A source's ``caBundle`` field naming ``configmap`` (its default key ``ca.crt``), or nothing."""
    return {} if configmap is None else {"caBundle": {"configMapRef": {"name": configmap}}}


def bundle_file(configmap: str) -> str:
    """Where the fetching pod reads ``configmap``'s bundle (``render.common.source_trust``)."""
    return f"{SOURCE_CA_MOUNT}/{configmap}/{SOURCE_CA_FILE}"


@dataclass(frozen=True)
class HttpsSource:
    """The HTTPS file server's namespace on the real node, and what the tests need from it."""

    kubectl: Kubectl
    namespace: str
    workloads: str
    simulator: str
    node: str | None

    def corpus_source(self, configmap: str | None) -> dict[str, Any]:
        return {"uri": file_url(CORPUS, self.namespace), **ca_bundle(configmap)}

    def dataset(self, name: str, configmap: str | None) -> dict[str, Any]:
        """A text dataset of the corpus over HTTPS; one preparer pod (a TLS failure is not retried)."""
        spec = {"source": self.corpus_source(configmap), "modality": "text", "shards": {"count": SHARDS},
                "storage": {"size": "100Mi"}, "prepare": {"backoffLimit": 0}}  # fmt: skip
        return {"apiVersion": "lepton.ai/v1alpha1", "kind": "LeptonDataset", "metadata": {"name": name}, "spec": spec}

    def dataset_when(self, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The dataset once the operator has observed its current generation and ``check`` holds of its status."""

        def current() -> dict[str, Any] | None:
            obj: dict[str, Any] = self.kubectl.get("lds", name)
            status = obj.get("status") or {}
            if status.get("observedGeneration") == obj["metadata"]["generation"] and check(status):
                return obj
            conditions = {c["type"]: (c["reason"], c["message"][:300]) for c in status.get("conditions", [])}
            raise LookupError(f"phase {status.get('phase')}, {conditions}")

        found: dict[str, Any] = wait_until(current, TIMEOUT, f"LeptonDataset {name}: {what}")
        return found

    def prepare_jobs(self, name: str) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.kubectl.get("jobs", None, "-l", f"lepton.ai/leptondataset={name}")
        return jobs

    def manifest(self, claim: str) -> bytes:
        """The prepared ``manifest.json`` on the dataset's claim, read by a pod."""
        return read_claim(self.kubectl, claim, ["manifest.json"], self.workloads)["manifest.json"]

    def inference_service(self, configmap: str | None) -> dict[str, Any]:
        return {
            "apiVersion": "lepton.ai/v1alpha1", "kind": "InferenceService", "metadata": {"name": SERVICE},
            "spec": {"model": model_spec({"uri": model_uri(self.namespace), **ca_bundle(configmap)}),
                     "triton": {"image": self.simulator}, "replicas": 1,
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}},
        }  # fmt: skip

    def server_pods(self) -> list[dict[str, Any]]:
        pods = self.kubectl.get("pods", None, "-l", f"lepton.ai/inferenceservice={SERVICE},lepton.ai/role=server")
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]


def condition_of(status: dict[str, Any], ctype: str) -> tuple[str, str, str]:
    """``(status, reason, message)`` of a condition of ``status``."""
    found = condition({"status": status}, ctype) or {}
    return found.get("status", ""), found.get("reason", ""), found.get("message", "")


def stager_failure(pod: dict[str, Any]) -> str | None:
    """The termination message of the stager init container's last failure, if it has failed."""
    for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if container["name"] == STAGER:
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                ended = state.get("terminated") or {}
                if ended.get("exitCode", 0) != 0:
                    return str(ended.get("message") or f"exit code {ended['exitCode']}, no message")
    return None


@pytest.fixture(scope="module")
def https_source(cluster: Cluster, cluster_kubectl: Kubectl, built_images: dict[str, Image],
                 incluster_operator: InClusterOperator) -> Iterator[HttpsSource]:  # fmt: skip
    if cluster.real_node is None:
        pytest.fail("sources over TLS are proven on the local cluster's real node")
    namespace = f"{NAMESPACE_PREFIX}source-tls-{uuid.uuid4().hex[:6]}"  # the in-cluster operator's, on the real node
    cluster_kubectl.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubectl = cluster_kubectl.in_namespace(namespace)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            wait_until(lambda: kubectl.get_or_none("serviceaccount", "default"), 30, "the namespace's ServiceAccount")
            served = make_certificates(Path(scratch) / "served", server_names(namespace))
            other = make_certificates(Path(scratch) / "other", server_names(namespace))  # same names, another CA
            files = model_configmap(FILES)
            files["data"][CORPUS] = "".join(f'{{"id": {i}, "text": "record {i}"}}\n' for i in range(RECORDS))
            kubectl.apply(files)
            kubectl.apply(tls_secret(SERVER_TLS, served))
            kubectl.apply(ca_configmap(TRUSTED_CA, served.ca.read_text()))
            kubectl.apply(ca_configmap(OTHER_CA, other.ca.read_text()))
            kubectl.apply(model_server(built_images["workloads"].ref, FILES, tls_secret=SERVER_TLS))
            wait_until(lambda: condition_true(kubectl.get("pod", SERVER), "Ready"), TIMEOUT, "the HTTPS server Ready")
            yield HttpsSource(kubectl, namespace, built_images["workloads"].ref, built_images["triton-simulator"].ref,
                              cluster.real_node)  # fmt: skip
        finally:
            cluster_kubectl.run("delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)


def test_dataset_over_https_with_the_ca_bundle_prepares_and_another_ca_fails_keeping_the_shards(
    https_source: HttpsSource,
) -> None:
    source = https_source
    source.kubectl.apply(source.dataset("trusted", TRUSTED_CA), "--server-side")
    obj = source.dataset_when("trusted", lambda s: s.get("phase") == "Ready", "Ready")
    status = obj["status"]
    assert (status["records"], status["shards"]) == (RECORDS, PREPARED_SHARDS), status
    [job] = source.prepare_jobs("trusted")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert {"name": SOURCE_CA_FILE_ENV, "value": bundle_file(TRUSTED_CA)} in container["env"]
    prepared = source.manifest(status["claimName"])

    # Another CA: a new preparation (the source changed), refused by the preparer's TLS check.
    source.kubectl.apply(source.dataset("trusted", OTHER_CA), "--server-side")
    obj = source.dataset_when("trusted", lambda s: s.get("phase") == "Failed", "Failed with the other CA")
    state, reason, message = condition_of(obj["status"], "Prepared")
    print(f"\nthe other CA: {reason}: {message}")
    assert (state, reason) == ("False", TLS_REASON)
    assert message.startswith(f"GET {source.corpus_source(None)['uri']}: {CERTIFICATE_FAILED}"), message
    assert message.endswith(f"(trusted: the system roots and the CA bundle {bundle_file(OTHER_CA)})"), message
    assert source.manifest(status["claimName"]) == prepared, "the shards prepared before are kept"


def test_dataset_over_https_without_a_ca_bundle_fails_with_source_tls_error(https_source: HttpsSource) -> None:
    source = https_source
    source.kubectl.apply(source.dataset("untrusted", None), "--server-side")
    obj = source.dataset_when("untrusted", lambda s: s.get("phase") == "Failed", "Failed")
    state, reason, message = condition_of(obj["status"], "Prepared")
    print(f"\nno caBundle: {reason}: {message}")
    assert (state, reason) == ("False", TLS_REASON)
    uri = source.corpus_source(None)["uri"]
    assert message == f"GET {uri}: {CERTIFICATE_FAILED}unable to get local issuer certificate {SYSTEM_ROOTS_ONLY}"
    assert condition_of(obj["status"], "Stalled")[:2] == ("True", TLS_REASON)
    pods = source.kubectl.get("pods", None, "-l", f"job-name={source.prepare_jobs('untrusted')[0]['metadata']['name']}")
    assert [pod["spec"]["nodeName"] for pod in pods] == [source.node], "the preparer ran on the real node"


def test_dataset_waits_for_its_ca_configmap_and_its_key_then_prepares(https_source: HttpsSource) -> None:
    source = https_source
    source.kubectl.apply(source.dataset("late", "late-ca"), "--server-side")
    obj = source.dataset_when("late", lambda s: condition_of(s, "Validated")[1] == "ConfigMapNotFound",
                              "ConfigMapNotFound")  # fmt: skip
    assert obj["status"]["phase"] == "Pending" and source.prepare_jobs("late") == []
    source.kubectl.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late-ca"}, "data": {"other": "x"}})
    obj = source.dataset_when("late", lambda s: condition_of(s, "Validated")[1] == "ConfigMapKeyMissing",
                              "ConfigMapKeyMissing")  # fmt: skip
    assert "ca.crt" in condition_of(obj["status"], "Validated")[2] and source.prepare_jobs("late") == []
    trusted = source.kubectl.get("configmap", TRUSTED_CA)["data"]["ca.crt"]
    source.kubectl.apply(ca_configmap("late-ca", trusted))
    obj = source.dataset_when("late", lambda s: s.get("phase") == "Ready", "Ready once the CA is there")
    assert obj["status"]["records"] == RECORDS and condition_of(obj["status"], "Validated")[:2] == ("True", "Valid")


def test_model_over_https_is_staged_with_the_ca_bundle_and_refused_without(https_source: HttpsSource) -> None:
    source = https_source
    source.kubectl.apply(source.inference_service(None), "--server-side")

    def refused() -> str | None:
        messages = [stager_failure(pod) for pod in source.server_pods()]
        return next((m for m in messages if m), None)

    message = wait_until(refused, TIMEOUT, "the stager to fail without the CA")
    print(f"\nthe stager without caBundle: {message}")
    assert message == (f"{TLS_REASON}: GET {model_uri(source.namespace)}: {CERTIFICATE_FAILED}"
                       f"unable to get local issuer certificate {SYSTEM_ROOTS_ONLY}")  # fmt: skip
    assert not condition_true(source.kubectl.get("inferenceservice", SERVICE), "Ready")

    source.kubectl.apply(source.inference_service(TRUSTED_CA), "--server-side")

    def ready() -> dict[str, Any] | None:
        found = source.kubectl.get("inferenceservice", SERVICE)
        return found if condition_true(found, "Ready") and (found.get("status") or {}).get("readyReplicas") == 1 else None

    wait_until(ready, TIMEOUT, f"InferenceService {SERVICE} Ready with the CA")
    [pod] = [pod for pod in source.server_pods() if condition_true(pod, "Ready")]
    assert pod["spec"]["nodeName"] == source.node and stager_failure(pod) is None
    assert [c["state"]["terminated"]["exitCode"] for c in pod["status"]["initContainerStatuses"]] == [0]
