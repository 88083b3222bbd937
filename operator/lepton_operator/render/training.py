"""TrainingJob children as pure functions: a headless Service, worker pods, a checkpoint claim.

One headless Service per job (not one per worker, as Kubeflow does) gives every
worker a stable DNS name, ``<job>-worker-<i>.<job>.<namespace>.svc``, through
the pod's ``hostname``/``subdomain``; ``publishNotReadyAddresses`` makes the
names resolve before the pods are Ready, which rendezvous needs (workers are
Ready only once rendezvous is done).

Workers form a *group*: the group generation (``lepton.ai/group``, also in the
pod name) counts the group restarts. A restart deletes the whole group and
creates the next generation only after the old pods are gone, so a restarted
group never rendezvouses with a stale pod. Pods use ``restartPolicy: Never``:
the kubelet must not restart one worker alone (torchrun semantics: the group
restarts as one), the operator does.

The torchrun contract is in the environment (torchrun reads ``PET_*``):

* ``WORLD_SIZE`` is the total number of processes (workers x nprocPerNode), as
  PyTorch defines it; ``NODE_RANK`` is the worker index and ``RANK`` the global
  rank of the worker's first process (so, with one process per worker, a plain
  ``python`` command can use ``init_method="env://"`` directly);
* ``MASTER_ADDR``/``MASTER_PORT`` name worker 0 through the Service;
  ``PET_RDZV_ENDPOINT`` is the same address. A fixed-size job uses torchrun's
  static rendezvous (``PET_NODE_RANK``); an elastic one (``PET_NNODES`` is
  ``min:max``) uses the c10d rendezvous hosted by worker 0.
* ``LEPTON_DATASET_DIR``, ``LEPTON_CHECKPOINT_DIR``, ``LEPTON_OUTPUT_DIR`` and
  ``LEPTON_CHECKPOINT_EVERY_STEPS`` tell the trainer where things are;
  ``LEPTON_PROGRESS_PORT`` (also the container port ``progress``) is where
  rank 0 serves its live progress, which the operator polls on worker 0.

An ``entrypoint`` runs under torchrun (:data:`TORCHRUN`), launched so that a failed worker's own
exit code becomes the container's, which is what failures are classified by.

These names are the contract: a user's ``env`` entry with one of them is left
out (the operator's value wins), so the group can never disagree about its size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lepton_operator.api.meta import TRAINING_JOB
from lepton_operator.api.quantity import parse_quantity
from lepton_operator.api.training import WORKER_GROUP_LABEL, WORKER_INDEX_LABEL, TrainingJobSpec
from lepton_operator.render import common

KIND = TRAINING_JOB.kind
WORKER_ROLE = "worker"
SERVICE_ROLE = "rendezvous"
CHECKPOINT_ROLE = "checkpoint"
INDEX_LABEL = WORKER_INDEX_LABEL
GROUP_LABEL = WORKER_GROUP_LABEL
CONTAINER_NAME = "worker"
PORT_NAME = "rendezvous"
DATASET_VOLUME = "dataset"
CHECKPOINT_VOLUME = "checkpoint"
OUTPUT_VOLUME = "output"
#: PyTorch's (and OpenMP's) thread count, set from the worker's cpu (:func:`threads_per_process`).
THREADS_ENV = "OMP_NUM_THREADS"
#: Keeps a worker away from the scheduler while its group waits for room (``controllers.admission``).
GANG_GATE = "lepton.ai/gang"
#: Sub-directories of a claim shared by checkpoints and the export.
CHECKPOINT_SUBPATH = "checkpoints"
OUTPUT_SUBPATH = "output"


def service_name(job: str) -> str:
    """The headless Service (and pods' subdomain) of a job: the job's own name."""
    return job


def hostname(job: str, index: int) -> str:
    """The stable hostname of worker ``index`` (the same in every group)."""
    return f"{job}-worker-{index}"


def pod_name(job: str, index: int, group: int) -> str:
    """The pod of worker ``index`` in group generation ``group``."""
    return f"{hostname(job, index)}-g{group}"


def master_address(job: str, namespace: str) -> str:
    """Worker 0's DNS name through the headless Service."""
    return f"{hostname(job, 0)}.{service_name(job)}.{namespace}.svc"


def checkpoint_claim_name(job: str, spec: TrainingJobSpec) -> str | None:
    """The PVC holding checkpoints: the user's, the one the operator creates, or none."""
    if spec.checkpoint is None:
        return None
    return spec.checkpoint.claim_name or f"{job}-checkpoint"


def output_claim_name(job: str, spec: TrainingJobSpec) -> str | None:
    """The PVC receiving the export: the output's own claim, else the checkpoint claim."""
    if spec.output is not None and spec.output.claim_name:
        return spec.output.claim_name
    return checkpoint_claim_name(job, spec)


def output_uri(job: str, spec: TrainingJobSpec) -> str | None:
    """``pvc://claim/dir`` of the export, when it lands on a claim."""
    if spec.output is None:
        return None
    claim = output_claim_name(job, spec)
    return f"pvc://{claim}/{OUTPUT_SUBPATH}" if claim else None


def worker_selector(job: str) -> dict[str, str]:
    """Labels selecting every worker pod of a job, whatever its group."""
    return common.selector_labels(KIND, job, WORKER_ROLE)


def nnodes(spec: TrainingJobSpec, replicas: int) -> str:
    """torchrun's ``--nnodes``: the group size, or ``min:max`` when elastic."""
    workers = spec.workers
    if workers.elastic:
        return f"{workers.min_replicas or workers.replicas}:{workers.max_replicas or workers.replicas}"
    return str(replicas)


def worker_env(job: str, namespace: str, uid: str, spec: TrainingJobSpec, index: int, replicas: int,
               group: int) -> list[dict[str, str]]:  # fmt: skip
    """The environment of worker ``index`` in a group of ``replicas`` workers (see module docstring)."""
    nproc = spec.workers.processes_per_node
    master = master_address(job, namespace)
    contract: dict[str, str] = {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(spec.master_port),
        "WORLD_SIZE": str(replicas * nproc),
        "RANK": str(index * nproc),
        "NODE_RANK": str(index),
        "PET_NNODES": nnodes(spec, replicas),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_RDZV_ENDPOINT": f"{master}:{spec.master_port}",
        "PET_RDZV_ID": f"{uid or job}-g{group}",
        "LEPTON_JOB_NAME": job,
        "LEPTON_WORKER_INDEX": str(index),
        "LEPTON_GROUP": str(group),
    }
    progress_env, _ = common.progress_endpoint(common.progress_port(spec.master_port))
    contract[progress_env["name"]] = progress_env["value"]
    if spec.workers.elastic:
        contract["PET_RDZV_BACKEND"] = "c10d"
    else:
        contract["PET_NODE_RANK"] = str(index)
    if spec.dataset is not None:
        contract["LEPTON_DATASET_DIR"] = spec.dataset.mount_path
    if spec.checkpoint is not None:
        contract["LEPTON_CHECKPOINT_DIR"] = spec.checkpoint.path
        contract["LEPTON_CHECKPOINT_EVERY_STEPS"] = str(spec.checkpoint.every_steps)
    if spec.output is not None:
        contract["LEPTON_OUTPUT_DIR"] = spec.output.path
        contract["LEPTON_OUTPUT_FORMAT"] = spec.output.format
    env = [{"name": name, "value": value} for name, value in contract.items()]
    seen = set(contract)
    for var in spec.env or []:
        if var.name not in seen:
            seen.add(var.name)
            env.append({"name": var.name, "value": var.value})
    threads = threads_per_process(spec)
    if threads is not None and THREADS_ENV not in seen:
        env.append({"name": THREADS_ENV, "value": str(threads)})
    return env


def threads_per_process(spec: TrainingJobSpec) -> int | None:
    """CPU threads each worker process may use: the worker's cpu (limit, else request) over its processes.

    PyTorch sizes its thread pools by the *node's* cores, not the container's
    share, and torchrun sets ``OMP_NUM_THREADS=1`` only for several processes per
    node. Two one-process workers on a 2-core node then run 2 x 2 compute
    threads beside gloo's, and DDP across pods ran at a third of one pod's speed
    (``bench/fullpath.py``). ``None`` (leave it to PyTorch) when no cpu is given;
    a user's own ``OMP_NUM_THREADS`` wins.
    """
    resources = spec.workers.resources
    if resources is None:
        return None
    cpu = (resources.limits or {}).get("cpu") or (resources.requests or {}).get("cpu")
    if cpu is None:
        return None
    return max(1, int(parse_quantity(cpu) // spec.workers.processes_per_node))


#: torchrun, run so that the first failed worker process's exit code is the container's. torchrun
#: itself exits with 1 whatever ended its worker (an exit code, SIGKILL from the OOM killer), and
#: the operator classifies failures by the container's exit code: a retryable 137 would read as a
#: non-retryable 1. A signal becomes 128 + its number, as a shell reports it. torchrun's own
#: ``main`` does everything else (its error files and logs), so any image with torch runs it.
TORCHRUN = (
    "import sys\n"
    "from torch.distributed.elastic.multiprocessing.errors import ChildFailedError\n"
    "from torch.distributed.run import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except ChildFailedError as error:\n"
    "    code = error.get_first_failure()[1].exitcode\n"
    "    sys.exit(128 - code if code < 0 else code or 1)\n"
)


def worker_command(spec: TrainingJobSpec) -> dict[str, list[str]]:
    """``command``/``args`` of the worker container: torchrun for an entrypoint, else the user's."""
    if spec.entrypoint is not None:
        return {"command": ["python", "-c", TORCHRUN, "-m", spec.entrypoint.module, *(spec.entrypoint.args or [])]}
    rendered: dict[str, list[str]] = {}
    if spec.command is not None:
        rendered["command"] = list(spec.command)
    if spec.args is not None:
        rendered["args"] = list(spec.args)
    return rendered


def volumes(job: str, spec: TrainingJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pod volumes and the worker's mounts: dataset (read-only), checkpoints, output."""
    pod: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.dataset is not None:
        # The dataset's PVC is named after the LeptonDataset (see the dataset controller).
        pod.append({"name": DATASET_VOLUME, "persistentVolumeClaim": {"claimName": spec.dataset.name, "readOnly": True}})
        mounts.append({"name": DATASET_VOLUME, "mountPath": spec.dataset.mount_path, "readOnly": True})
    checkpoint_claim = checkpoint_claim_name(job, spec)
    if spec.checkpoint is not None and checkpoint_claim is not None:
        pod.append({"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": checkpoint_claim}})
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path, "subPath": CHECKPOINT_SUBPATH})
    if spec.output is not None:
        claim = output_claim_name(job, spec)
        if claim is None:
            pod.append({"name": OUTPUT_VOLUME, "emptyDir": {}})
            mounts.append({"name": OUTPUT_VOLUME, "mountPath": spec.output.path})
        else:
            volume = CHECKPOINT_VOLUME if claim == checkpoint_claim else OUTPUT_VOLUME
            if volume == OUTPUT_VOLUME:
                pod.append({"name": OUTPUT_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
            mounts.append({"name": volume, "mountPath": spec.output.path, "subPath": OUTPUT_SUBPATH})
    return pod, mounts


def headless_service(job: str, namespace: str, uid: str, spec: TrainingJobSpec) -> dict[str, Any]:
    """The job's one headless Service: DNS for every worker, even before it is Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(job),
            "namespace": namespace,
            "labels": common.child_labels(KIND, job, SERVICE_ROLE),
            "ownerReferences": [common.owner_reference(KIND, job, uid)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": worker_selector(job),
            "ports": [{"name": PORT_NAME, "port": spec.master_port, "targetPort": spec.master_port}],
        },
    }


def worker_pod(job: str, namespace: str, uid: str, spec: TrainingJobSpec, index: int, replicas: int,
               group: int) -> dict[str, Any]:  # fmt: skip
    """Worker ``index`` of group ``group`` (``replicas`` workers)."""
    workers = spec.workers
    pod_volumes, mounts = volumes(job, spec)
    _, progress_port = common.progress_endpoint(common.progress_port(spec.master_port))
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        **worker_command(spec),
        "env": worker_env(job, namespace, uid, spec, index, replicas, group),
        "ports": [{"name": PORT_NAME, "containerPort": spec.master_port}, progress_port],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = common.container_resources(workers.resources, workers.gpu)
    if resources:
        container["resources"] = resources
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "hostname": hostname(job, index),
        "subdomain": service_name(job),
        "restartPolicy": "Never",
        "containers": [container],
    }
    pod_spec.update(common.placement(workers.node_selector, workers.tolerations, workers.gpu))
    if pod_volumes:
        pod_spec["volumes"] = pod_volumes
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [ref.to_wire() for ref in spec.image_pull_secrets]
    labels = {
        **common.child_labels(KIND, job, WORKER_ROLE),
        INDEX_LABEL: str(index),
        GROUP_LABEL: str(group),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job, index, group),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [common.owner_reference(KIND, job, uid)],
        },
        "spec": common.harden(pod_spec, spec.security_context),
    }


def worker_group(job: str, namespace: str, uid: str, spec: TrainingJobSpec, replicas: int,
                 group: int) -> list[dict[str, Any]]:  # fmt: skip
    """Every worker pod of one group, in index order."""
    return [worker_pod(job, namespace, uid, spec, index, replicas, group) for index in range(replicas)]


def gated(pod: Mapping[str, Any]) -> dict[str, Any]:
    """``pod`` held back from the scheduler by the gang gate until its whole group is admitted."""
    return {**pod, "spec": {**pod["spec"], "schedulingGates": [{"name": GANG_GATE}]}}


def checkpoint_claim(job: str, namespace: str, uid: str, spec: TrainingJobSpec) -> dict[str, Any] | None:
    """The checkpoint PVC the operator creates (``checkpoint.size``), or ``None``.

    Every worker mounts it, on different nodes (ReadWriteMany by default). It
    is owned by the job, so it goes when the job is deleted.
    """
    if spec.checkpoint is None or spec.checkpoint.size is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": checkpoint_claim_name(job, spec),
            "namespace": namespace,
            "labels": common.child_labels(KIND, job, CHECKPOINT_ROLE),
            "ownerReferences": [common.owner_reference(KIND, job, uid)],
        },
        "spec": common.claim_spec_of(str(spec.checkpoint.size), spec.checkpoint.access_modes,
                                     spec.checkpoint.storage_class_name),  # fmt: skip
    }
