"""TrainingJob children: the headless Service, worker pods with the torchrun contract, the checkpoint claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

import restricted_policy

from lepton_operator.api.training import SERVED_AS, ExportFormat, TrainingJobSpec
from lepton_operator.render import training as render


def spec(**fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"image": "trainer:1", **fields})


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in pod["spec"]["containers"][0]["env"]}


def test_headless_service_selects_every_worker_and_publishes_not_ready_addresses() -> None:
    service = render.headless_service("bert", "ml", "uid-1", spec())
    assert service["metadata"]["name"] == "bert"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"lepton.ai/trainingjob": "bert", "lepton.ai/role": "worker"}
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": 29500}]
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_workers_have_stable_hostnames_group_in_name_and_never_restart_alone() -> None:
    pods = render.worker_group("bert", "ml", "uid-1", spec(workers={"replicas": 3}), 3, group=2)
    assert [p["metadata"]["name"] for p in pods] == ["bert-worker-0-g2", "bert-worker-1-g2", "bert-worker-2-g2"]
    assert [p["spec"]["hostname"] for p in pods] == ["bert-worker-0", "bert-worker-1", "bert-worker-2"]
    for index, pod in enumerate(pods):
        assert pod["spec"]["subdomain"] == "bert"
        assert pod["spec"]["restartPolicy"] == "Never"
        labels = pod["metadata"]["labels"]
        assert labels["lepton.ai/worker-index"] == str(index)
        assert labels["lepton.ai/group"] == "2"
        assert labels["lepton.ai/trainingjob"] == "bert" and labels["lepton.ai/role"] == "worker"
        assert pod["metadata"]["ownerReferences"][0]["controller"] is True
        # The Service selects the pods.
        service = render.headless_service("bert", "ml", "uid-1", spec())
        assert service["spec"]["selector"].items() <= labels.items()


def test_torchrun_env_of_a_fixed_size_gpu_job() -> None:
    job = spec(workers={"replicas": 4, "gpu": {"count": 8}}, masterPort=23456)
    env = env_of(render.worker_pod("bert", "ml", "uid-1", job, 2, 4, group=0))
    assert env["MASTER_ADDR"] == "bert-worker-0.bert.ml.svc"
    assert env["MASTER_PORT"] == "23456"
    assert env["WORLD_SIZE"] == "32"  # processes, as PyTorch counts them
    assert env["NODE_RANK"] == "2" and env["PET_NODE_RANK"] == "2"
    assert env["RANK"] == "16"
    assert env["PET_NNODES"] == "4"
    assert env["PET_NPROC_PER_NODE"] == "8"
    assert env["PET_RDZV_ENDPOINT"] == "bert-worker-0.bert.ml.svc:23456"
    assert "PET_RDZV_BACKEND" not in env  # static rendezvous
    assert "LEPTON_DATASET_DIR" not in env and "LEPTON_CHECKPOINT_DIR" not in env


def test_elastic_job_uses_min_max_nodes_and_c10d() -> None:
    job = spec(workers={"replicas": 2, "minReplicas": 1, "maxReplicas": 4})
    env = env_of(render.worker_pod("bert", "ml", "uid-1", job, 0, 2, group=1))
    assert env["PET_NNODES"] == "1:4"
    assert env["PET_RDZV_BACKEND"] == "c10d"
    assert env["WORLD_SIZE"] == "2"
    assert "PET_NODE_RANK" not in env
    assert env["PET_RDZV_ID"] == "uid-1-g1"


def test_user_env_cannot_override_the_contract() -> None:
    job = spec(env=[{"name": "WORLD_SIZE", "value": "99"}, {"name": "NCCL_DEBUG", "value": "INFO"}])
    env = render.worker_pod("bert", "ml", "u", job, 0, 1, 0)["spec"]["containers"][0]["env"]
    names = [var["name"] for var in env]
    assert len(names) == len(set(names))
    assert {v["name"]: v["value"] for v in env}["WORLD_SIZE"] == "1"
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in env


def test_entrypoint_runs_under_torchrun_and_command_is_the_users() -> None:
    job = spec(entrypoint={"module": "lepton_workloads.train", "args": ["--epochs", "2"]})
    container = render.worker_pod("bert", "ml", "u", job, 0, 1, 0)["spec"]["containers"][0]
    assert container["command"] == ["python", "-c", render.TORCHRUN, "-m", "lepton_workloads.train", "--epochs", "2"]
    assert "args" not in container
    job = spec(command=["python", "train.py"], args=["--lr", "0.1"])
    container = render.worker_pod("bert", "ml", "u", job, 0, 1, 0)["spec"]["containers"][0]
    assert (container["command"], container["args"]) == (["python", "train.py"], ["--lr", "0.1"])
    container = render.worker_pod("bert", "ml", "u", spec(), 0, 1, 0)["spec"]["containers"][0]
    assert "command" not in container and "args" not in container


def test_gpu_scheduling_comes_from_common() -> None:
    job = spec(workers={"replicas": 1, "gpu": {"count": 2, "product": "NVIDIA-H100"}, "nodeSelector": {"pool": "a"},
                        "resources": {"requests": {"cpu": "4"}}})  # fmt: skip
    pod = render.worker_pod("bert", "ml", "u", job, 0, 1, 0)
    assert pod["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "4"}, "limits": {"nvidia.com/gpu": 2}}
    assert pod["spec"]["nodeSelector"] == {"pool": "a", "nvidia.com/gpu.product": "NVIDIA-H100"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu_pod = render.worker_pod("bert", "ml", "u", spec(), 0, 1, 0)
    assert "tolerations" not in cpu_pod["spec"] and "nodeSelector" not in cpu_pod["spec"]


def test_dataset_is_mounted_read_only_and_checkpoints_and_output_share_a_created_claim() -> None:
    job = spec(dataset={"name": "images", "mountPath": "/data"}, checkpoint={"size": "10Gi", "everySteps": 50},
               output={"path": "/out"})  # fmt: skip
    pod = render.worker_pod("bert", "ml", "u", job, 0, 1, 0)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dataset"]["persistentVolumeClaim"] == {"claimName": "images", "readOnly": True}
    assert volumes["checkpoint"]["persistentVolumeClaim"] == {"claimName": "bert-checkpoint"}
    assert "output" not in volumes
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True
    assert (mounts["/checkpoints"]["name"], mounts["/checkpoints"]["subPath"]) == ("checkpoint", "checkpoints")
    assert (mounts["/out"]["name"], mounts["/out"]["subPath"]) == ("checkpoint", "output")
    env = env_of(pod)
    assert (env["LEPTON_DATASET_DIR"], env["LEPTON_CHECKPOINT_DIR"], env["LEPTON_OUTPUT_DIR"]) == ("/data", "/checkpoints", "/out")
    assert env["LEPTON_CHECKPOINT_EVERY_STEPS"] == "50"
    claim = render.checkpoint_claim("bert", "ml", "u", job)
    assert claim is not None
    assert claim["metadata"]["name"] == "bert-checkpoint"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert render.output_uri("bert", job) == "pvc://bert-checkpoint/output"


def test_an_existing_checkpoint_claim_is_used_and_not_created() -> None:
    job = spec(checkpoint={"claimName": "ckpt"}, output={"claimName": "models"})
    assert render.checkpoint_claim("bert", "ml", "u", job) is None
    volumes = {v["name"]: v for v in render.worker_pod("bert", "ml", "u", job, 0, 1, 0)["spec"]["volumes"]}
    assert volumes["checkpoint"]["persistentVolumeClaim"]["claimName"] == "ckpt"
    assert volumes["output"]["persistentVolumeClaim"]["claimName"] == "models"
    assert render.output_uri("bert", job) == "pvc://models/output"


def test_output_without_a_claim_is_scratch_space() -> None:
    job = spec(output={})
    volumes = render.worker_pod("bert", "ml", "u", job, 0, 1, 0)["spec"]["volumes"]
    assert volumes == [{"name": "output", "emptyDir": {}}]
    assert render.output_uri("bert", job) is None


def test_the_output_format_reaches_the_trainer_which_exports_what_the_operator_serves_it_as() -> None:
    from lepton_workloads import export  # noqa: PLC0415 - torch and onnx, for this test only

    assert env_of(render.worker_pod("bert", "ml", "u", spec(output={}), 0, 1, 0))["LEPTON_OUTPUT_FORMAT"] == "torchscript"
    for export_format in get_args(ExportFormat):
        pod = render.worker_pod("bert", "ml", "u", spec(output={"format": export_format}), 0, 1, 0)
        assert env_of(pod)["LEPTON_OUTPUT_FORMAT"] == export_format
    # The two sides share only the env contract: the same formats, served by the same Triton backends.
    assert export.FORMATS == SERVED_AS


def test_longest_job_name_keeps_hostnames_within_63_characters() -> None:
    name = "j" * 50
    pod = render.worker_pod(name, "ml", "u", spec(), 1023, 1024, 7)
    assert len(pod["spec"]["hostname"]) <= 63


def test_workers_pass_pod_security_restricted_as_the_chosen_user() -> None:
    pod = render.worker_pod("bert", "ml", "uid-1", spec(securityContext={"runAsUser": 1001, "fsGroup": 1001}), 0, 2, 0)
    assert restricted_policy.violations(pod["spec"]) == []
    assert pod["spec"]["securityContext"]["runAsUser"] == 1001
    default = render.worker_pod("bert", "ml", "uid-1", spec(), 0, 2, 0)
    assert restricted_policy.violations(default["spec"]) == []


def test_workers_declare_the_progress_port_and_tell_the_trainer_about_it() -> None:
    pod = render.worker_pod("bert", "ml", "uid-1", spec(), 0, 2, group=0)
    container = pod["spec"]["containers"][0]
    assert container["ports"] == [{"name": "rendezvous", "containerPort": 29500},
                                  {"name": "progress", "containerPort": 9400}]  # fmt: skip
    assert env_of(pod)["LEPTON_PROGRESS_PORT"] == "9400"
    # A rendezvous on the progress port moves the progress endpoint aside, never onto it.
    clash = render.worker_pod("bert", "ml", "uid-1", spec(masterPort=9400), 0, 2, group=0)
    assert clash["spec"]["containers"][0]["ports"][1] == {"name": "progress", "containerPort": 9401}
    assert env_of(clash)["LEPTON_PROGRESS_PORT"] == "9401"
    user = spec(env=[{"name": "LEPTON_PROGRESS_PORT", "value": "1"}])
    assert env_of(render.worker_pod("bert", "ml", "uid-1", user, 0, 2, group=0))["LEPTON_PROGRESS_PORT"] == "9400"


def test_the_checkpoint_claim_takes_its_access_modes_and_class_from_the_spec() -> None:
    default = render.checkpoint_claim("bert", "ml", "u", spec(checkpoint={"size": "1Gi"}))
    assert default is not None and default["spec"]["accessModes"] == ["ReadWriteMany"]  # workers on several nodes
    assert "storageClassName" not in default["spec"]  # the cluster's default class
    chosen = spec(checkpoint={"size": "1Gi", "accessModes": ["ReadWriteOnce"], "storageClassName": "local"})
    claim = render.checkpoint_claim("bert", "ml", "u", chosen)
    assert claim is not None and claim["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                                                   "resources": {"requests": {"storage": "1Gi"}}}  # fmt: skip


@pytest.mark.parametrize(("ending", "code"), [("pass", 0), ("sys.exit(3)", 3), ("os._exit(137)", 137),
                                              ("os.kill(os.getpid(), signal.SIGKILL)", 137)])  # fmt: skip
def test_the_rendered_torchrun_exits_with_its_failed_workers_code(tmp_path: Path, ending: str, code: int) -> None:
    """torchrun alone exits 1 for all of these; the rendered launcher gives the operator the worker's code."""
    (tmp_path / "worker.py").write_text(f"import os, signal, sys\n{ending}\n")
    command = render.worker_command(spec(entrypoint={"module": "worker"}))["command"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PET_STANDALONE": "1", "PET_NPROC_PER_NODE": "1"}
    done = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr[-2000:]


def test_a_gated_worker_is_the_same_pod_held_by_the_gang_gate() -> None:
    job = TrainingJobSpec.model_validate({"image": "trainer:1", "workers": {"replicas": 2}})
    pod = render.worker_pod("job", "ml", "uid-1", job, 1, 2, 0)
    held = render.gated(pod)
    assert held["spec"]["schedulingGates"] == [{"name": "lepton.ai/gang"}]
    assert {**held["spec"], "schedulingGates": None} == {**pod["spec"], "schedulingGates": None}
    assert "schedulingGates" not in pod["spec"] and held["metadata"] == pod["metadata"]


def test_each_worker_process_gets_the_threads_its_cpu_allows_unless_the_user_says_otherwise() -> None:
    def threads(workers: dict[str, Any], env: list[dict[str, str]] | None = None) -> str | None:
        job = TrainingJobSpec.model_validate({"image": "trainer:1", "workers": workers, **({"env": env} if env else {})})
        found = {v["name"]: v["value"] for v in render.worker_env("job", "ml", "uid", job, 0, 1, 0)}
        return found.get("OMP_NUM_THREADS")

    assert threads({"replicas": 2, "resources": {"requests": {"cpu": "500m"}}}) == "1"
    assert threads({"replicas": 2, "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "8"}}, "nprocPerNode": 2}) == "4"
    assert threads({"replicas": 2}) is None  # no cpu given: PyTorch decides
    assert threads({"replicas": 2, "resources": {"requests": {"cpu": "4"}}}, [{"name": "OMP_NUM_THREADS", "value": "3"}]) == "3"
