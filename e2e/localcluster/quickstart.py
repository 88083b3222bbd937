"""The quickstart, for real on the local cluster's real node: what ``make demo`` shows, what the
full-path e2e test checks and what ``bench/fullpath.py`` times, through this one path.

The shipped ``manifests/examples/quickstart.yaml`` goes through ``components/local-images`` (the
images built here, with their exact build tags; the Triton-protocol simulator for NGC's Triton)
into a namespace whose pods run on the real node: the sample-data server, a LeptonDataset, a
TrainingJob and an InferenceService wired by references. The operator is the in-cluster one
(``incluster``): it reads the trainer's live progress from pod IPs and Triton's signals from the
cluster's Prometheus (``monitoring``), as it would on any cluster.

:class:`Quickstart` waits on each stage and returns what it saw, so the demo prints it and the
test asserts on it: the dataset Ready and the ``manifest.json`` read back from its claim by a
pod; the training job's status while its two workers train; the export read from the job's
claim; the InferenceService Ready, an inference through its Service (``access.ServiceForwards``:
a forwarder into the cluster's network to the Service's ClusterIP, so kube-proxy balances it like
in-cluster traffic) and a load step through the same address, both with the service's API key
(``spec.auth``: read from its Secret by ``access.api_key``, never written here). Every wait polls the cluster about once a second and
calls ``on_poll`` (the demo prints phase changes and progress there).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from localcluster import incluster, lepton_images, monitoring
from localcluster.access import ApiKey, ServiceForwards, api_key
from localcluster.handle import Cluster, ClusterError
from localcluster.images import Image
from localcluster.kube import Kubectl, condition_true, wait_until
from localcluster.lepton import REPO, install_crds
from localcluster.monitoring import Monitoring
from localcluster.serving import Load, Target, infer

EXAMPLE = REPO / "manifests" / "examples" / "quickstart.yaml"
COMPONENT = REPO / "manifests" / "components" / "local-images"
DATA, DATASET, JOB, SERVICE = "quickstart-data", "quickstart-images", "quickstart-train", "quickstart-serve"
MODEL = "quickstart"
KINDS = ("leptondatasets", "trainingjobs", "inferenceservices")
HTTP_PORT = 8000
POLL_SECONDS = 1.0
#: The hardened container settings of the pods this harness runs (Pod Security restricted).
HARDENED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
T = TypeVar("T")


def install_platform(cluster: Cluster, workdir: Path) -> tuple[dict[str, Image], Monitoring]:
    """What the quickstart runs on, as ``make demo`` sets it up: images, CRDs, operator, Prometheus.

    The images are built when their inputs changed and loaded into the node; the CRDs applied;
    the operator installed from the local overlay (``incluster``); the cluster's Prometheus
    started (``monitoring``). Each step is idempotent.
    """
    kubectl = cluster.kubectl()
    built = lepton_images.ensure_images()
    lepton_images.load(cluster, built)
    install_crds(kubectl)
    incluster.install(kubectl, built, workdir / "operator")
    return built, monitoring.ensure(cluster, kubectl)


def kustomization(images: Mapping[str, Image], directory: Path) -> dict[str, Any]:
    """The quickstart through the local-images component, pinned to the exact build tags."""
    pins = [{"name": images[name].ref.rsplit(":", 1)[0], "newTag": images[name].ref.rsplit(":", 1)[1]}
            for name in ("workloads", "triton-simulator")]  # fmt: skip
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(EXAMPLE, directory)],
            "components": [os.path.relpath(COMPONENT, directory)], "images": pins}  # fmt: skip


def claim_reader(name: str, claim: str, paths: Sequence[str], image: str) -> dict[str, Any]:
    """A pod that prints ``{path: base64 of the file}`` of ``paths`` on ``claim`` (mounted read-only)."""
    script = ("import base64, json, sys; print(json.dumps({p: base64.b64encode(open('/claim/' + p, 'rb').read())"
              ".decode() for p in sys.argv[1:]}))")  # fmt: skip
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "claim-reader"}},
        "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "read", "image": image, "imagePullPolicy": "Never", "securityContext": HARDENED,
                            "command": ["python", "-c", script, *paths],
                            "volumeMounts": [{"name": "claim", "mountPath": "/claim", "readOnly": True}]}],
            "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
        },
    }  # fmt: skip


def read_claim(kubectl: Kubectl, claim: str, paths: Sequence[str], image: str, timeout: float = 120.0,
               wait: Callable[[Callable[[], Any], float, str], Any] = wait_until) -> dict[str, bytes]:
    """The files ``paths`` on ``claim``, read by a :func:`claim_reader` pod (``image``: the workloads image).

    ``wait`` polls for the pod to end (:func:`wait_until`, or a caller's wrapper of it).
    """
    name = f"read-{uuid.uuid4().hex[:6]}"
    kubectl.create(claim_reader(name, claim, paths, image))
    try:
        phase = wait(lambda: kubectl.get("pod", name)["status"].get("phase") in ("Succeeded", "Failed")
                     and kubectl.get("pod", name)["status"]["phase"], timeout, f"pod {name} reading {claim}")  # fmt: skip
        logs = kubectl("logs", name)
        if phase != "Succeeded":
            raise ClusterError(f"reading {paths} from {claim} failed: {logs[-2000:]}")
        return {path: base64.b64decode(text) for path, text in json.loads(logs.strip().splitlines()[-1]).items()}
    finally:
        kubectl.delete("pod", name)


@dataclass
class Quickstart:
    """The quickstart in one namespace of ``cluster``; ``images`` are the ones built here."""

    cluster: Cluster
    namespace: str
    images: Mapping[str, Image]
    on_poll: Callable[[Quickstart], None] = lambda _: None
    _forwards: ServiceForwards | None = field(default=None, init=False)

    @property
    def kubectl(self) -> Kubectl:
        return self.cluster.kubectl(self.namespace)

    # -- waiting ---------------------------------------------------------------------------

    def wait(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """:func:`wait_until` about once a second, calling ``on_poll`` before each look."""

        def polled() -> T | None:
            self.on_poll(self)
            return predicate()

        found: T = wait_until(polled, timeout, what, interval=POLL_SECONDS)  # type: ignore[assignment]
        return found

    def status(self, kind: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = (self.kubectl.get_or_none(kind, name) or {}).get("status") or {}
        return found

    def phases(self) -> dict[str, str]:
        """``kind/name -> phase`` of the quickstart's Lepton objects."""
        found = {}
        for kind, name in (("leptondatasets", DATASET), ("trainingjobs", JOB), ("inferenceservices", SERVICE)):
            status = self.status(kind, name)
            found[f"{kind.removesuffix('s')}/{name}"] = str(status.get("phase") or status.get("reason") or "-")
        return found

    # -- the stages ------------------------------------------------------------------------

    def apply(self, edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """The namespace (pods on the real node) and the quickstart in it; ``edit`` changes each object
        in memory first (``bench/security_overhead.py`` turns the security off that way)."""
        if self.cluster.kubectl().get_or_none("namespace", self.namespace) is None:
            self.cluster.kubectl().create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
        wait_until(lambda: self.kubectl.get_or_none("serviceaccount", "default"), 30, "the namespace's ServiceAccount")
        with tempfile.TemporaryDirectory() as scratch:
            directory = Path(scratch)
            (directory / "kustomization.yaml").write_text(json.dumps(kustomization(self.images, directory)))
            built = self.kubectl("kustomize", "--load-restrictor=LoadRestrictionsNone", str(directory))
        if edit is not None:
            built = json.dumps({"apiVersion": "v1", "kind": "List", "items": [edit(o) for o in yaml.safe_load_all(built) if o]})
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=built)

    def dataset_ready(self, timeout: float = 240.0) -> dict[str, Any]:
        """Wait for the sample-data server and the prepared dataset; its status."""
        self.kubectl("rollout", "status", f"deployment/{DATA}", f"--timeout={timeout:.0f}s", timeout=timeout + 10)

        def ready() -> dict[str, Any] | None:
            status = self.status("leptondatasets", DATASET)
            return status if status.get("phase") == "Ready" else None

        return self.wait(ready, timeout, f"LeptonDataset {DATASET} Ready")

    def read_claim(self, claim: str, paths: Sequence[str], timeout: float = 120.0) -> dict[str, bytes]:
        """The files ``paths`` on ``claim``, read by a pod on the node that has the volume."""
        return read_claim(self.kubectl, claim, paths, self.images["workloads"].ref, timeout, self.wait)

    def training(self) -> dict[str, Any]:
        return self.status("trainingjobs", JOB)

    def workers(self, group: int | None = None) -> list[dict[str, Any]]:
        """The job's worker pods (of one group), not being deleted."""
        selector = f"lepton.ai/trainingjob={JOB},lepton.ai/role=worker" + (f",lepton.ai/group={group}" if group is not None else "")
        return [p for p in self.kubectl.get("pods", None, "-l", selector) if not p["metadata"].get("deletionTimestamp")]

    def training_reaches(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Wait until the TrainingJob's status satisfies ``predicate``; that status."""

        def reached() -> dict[str, Any] | None:
            status = self.training()
            if status.get("phase") == "Failed":
                raise ClusterError(f"TrainingJob {JOB} failed: {status.get('reason')}: {status.get('message')}")
            return status if predicate(status) else None

        return self.wait(reached, timeout, what)

    def export(self) -> dict[str, bytes]:
        """``config.pbtxt`` and ``1/model.pt`` of the job's export, from its output claim."""
        uri = str(self.training().get("output", {}).get("uri", ""))
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        files = [f"{path}/{MODEL_DIR}/config.pbtxt", f"{path}/{MODEL_DIR}/1/model.pt"]
        read = self.read_claim(claim, files)
        return {"config.pbtxt": read[files[0]], "model.pt": read[files[1]]}

    def serving_ready(self, replicas: int = 1, timeout: float = 240.0) -> dict[str, Any]:
        """Wait until ``replicas`` replicas are Ready (the model's own readiness) and the service is Ready."""

        def ready() -> dict[str, Any] | None:
            found = self.kubectl.get_or_none("inferenceservices", SERVICE) or {}
            status = found.get("status") or {}
            return status if condition_true(found, "Ready") and status.get("readyReplicas", 0) >= replicas else None

        return self.wait(ready, timeout, f"InferenceService {SERVICE} Ready with {replicas} replica(s)")

    def service_address(self) -> str:
        """``127.0.0.1:<port>`` on the host, forwarded to the Service's ClusterIP inside the cluster."""
        if self._forwards is None:
            self._forwards = ServiceForwards(self.cluster, self.namespace)
        return self._forwards.address(SERVICE, HTTP_PORT)

    def api_key(self) -> ApiKey | None:
        """The service's API key, from the Secret its ``spec.auth`` names."""
        return api_key(self.kubectl, SERVICE)

    def key_headers(self) -> dict[str, str] | None:
        """The HTTP headers that carry the API key (``None`` without ``spec.auth``)."""
        key = self.api_key()
        return key.http if key else None

    def infer(self, tensor: Any) -> Any:
        """One inference through the Service, with its API key; the model's output."""
        return infer(self.service_address(), MODEL, tensor, headers=self.key_headers())

    def load(self, make_input: Callable[[], Any]) -> Load:
        """A load generator aimed at the Service, with its API key (start its ``run`` in a thread, set ``rate``)."""
        return Load(MODEL, make_input, targets=[Target(SERVICE, self.service_address())], headers=self.key_headers())

    def server_pods(self) -> list[dict[str, Any]]:
        selector = f"lepton.ai/inferenceservice={SERVICE},lepton.ai/role=server"
        return [p for p in self.kubectl.get("pods", None, "-l", selector) if not p["metadata"].get("deletionTimestamp")]

    def replicas(self) -> tuple[int, int, int]:
        """``(desired, spec, ready)`` replicas: the autoscaler's decision, the Deployment's, the Ready ones."""
        status = self.status("inferenceservices", SERVICE)
        deployment = self.kubectl.get_or_none("deployment", SERVICE) or {}
        return (int(status.get("desiredReplicas") or 0), int((deployment.get("spec") or {}).get("replicas") or 0),
                int((deployment.get("status") or {}).get("readyReplicas") or 0))  # fmt: skip

    def stop(self) -> None:
        """Stop this run's Service forwarder (the cluster's teardown would sweep it too)."""
        if self._forwards is not None:
            self._forwards.stop()


def stage_times(run: Quickstart, edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                on_stage: Callable[[str, float], None] = lambda _, __: None) -> dict[str, float]:  # fmt: skip
    """Apply ``run``'s quickstart (``edit``: see :meth:`Quickstart.apply`) and time it: seconds from
    the apply to each stage's end (cumulative).

    prepare (-> dataset Ready), schedule (-> every worker Running), train (-> Succeeded), stage
    model (-> the replica's ``stage-model`` init container done), ready (-> the InferenceService
    Ready), first inference (with the key when the service has one). ``on_stage`` hears each.
    """
    marks: dict[str, float] = {}
    started = time.monotonic()

    def stamp(name: str) -> None:
        marks[name] = round(time.monotonic() - started, 1)
        on_stage(name, marks[name])

    run.apply(edit)
    run.dataset_ready(600)
    stamp("prepare")
    run.training_reaches(lambda s: s.get("phase") in ("Running", "Succeeded"), 600, "every worker Running")
    stamp("schedule")
    run.training_reaches(lambda s: s.get("phase") == "Succeeded", 1200, "the job to succeed")
    stamp("train")

    def staged() -> bool:
        for pod in run.server_pods():
            for state in pod.get("status", {}).get("initContainerStatuses") or []:
                if (state.get("state") or {}).get("terminated", {}).get("exitCode") == 0:
                    return True
        return False

    run.wait(staged, 600, "the model staged")
    stamp("stage model")
    run.serving_ready(timeout=600)
    stamp("ready")
    _, images = sample_images(1, seed=5)
    run.infer(images)
    stamp("first inference")
    return marks


#: The exported model's directory under the output path: the trainer's ``--model-name``, by
#: default the job's name (``LEPTON_JOB_NAME``).
MODEL_DIR = JOB


def sample_images(count: int, seed: int) -> tuple[list[str], Any]:
    """Fresh sample records (another seed than the served data's) as the trainer reads their images.

    Returns their labels and an ``N x 1 x H x W`` float32 array in [0, 1] (Pillow's decoding, as
    the trainer's ``Decoder``).
    """
    import numpy as np  # noqa: PLC0415 - the client side only
    from PIL import Image as Picture  # noqa: PLC0415

    from lepton_workloads import demo_data  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as scratch:
        labels = demo_data.write_records(Path(scratch), count, seed)
        planes = [np.asarray(Picture.open(Path(scratch) / f"{i:05d}.png"), dtype=np.float32)[None] / 255.0
                  for i in range(count)]  # fmt: skip
    return labels, np.stack(planes)
