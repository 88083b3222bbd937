"""The InferenceService's children: config, Triton Deployment, Service; scaling never touches the template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lepton_workloads import triton_config

import restricted_policy

from lepton_operator.api.dataset import LeptonDatasetSpec
from lepton_operator.api.inference import TRITON_UID, InferenceServiceSpec
from lepton_operator.render import dataset as render_dataset
from lepton_operator.render import inference
from lepton_operator.render.inference import ClaimSource, UriSource

BASE: dict[str, Any] = {
    "model": {
        "name": "resnet",
        "source": {"claim": {"name": "models", "path": "resnet/v3"}},
        "maxBatchSize": 16,
        "dynamicBatching": {"preferredBatchSizes": [4, 8], "maxQueueDelayMicroseconds": 200},
        "instanceCount": 2,
        "inputs": [{"name": "INPUT__0", "dims": [3, 224, 224]}],
        "outputs": [{"name": "OUTPUT__0", "dims": [1000]}],
    },
    "triton": {"image": "nvcr.io/nvidia/tritonserver:24.08-py3", "exitTimeoutSeconds": 40, "args": ["--log-verbose=1"]},
    "gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"},
    "resources": {"requests": {"cpu": "2", "memory": "8Gi"}},
}
SOURCE = ClaimSource("models", "resnet/v3")


def spec(**overrides: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({**BASE, **overrides})


def deployment(parsed: InferenceServiceSpec | None = None, replicas: int = 1, source: Any = SOURCE) -> dict[str, Any]:
    return inference.deployment("serve", "ns", "uid-1", parsed or spec(), source, replicas)


def triton(rendered: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = rendered["spec"]["template"]["spec"]["containers"][0]
    return container


def test_config_pbtxt_comes_from_the_one_generator_and_parses_as_triton_config() -> None:
    text = inference.config_text(spec())
    assert text is not None
    parsed = triton_config.from_protobuf(triton_config.parse(text))
    assert parsed.name == "resnet" and parsed.format == "pytorch_libtorch"
    assert parsed.max_batch_size == 16 and parsed.instance_count == 2 and parsed.instance_kind == "KIND_GPU"
    assert parsed.dynamic_batching and tuple(parsed.preferred_batch_sizes) == (4, 8)
    assert parsed.max_queue_delay_microseconds == 200
    configmap = inference.configmap("serve", "ns", "uid-1", spec())
    assert configmap["metadata"]["name"] == "serve-model-config"
    assert configmap["data"]["config.pbtxt"] == text


def test_without_tensors_the_export_config_is_used_and_the_spec_settings_go_to_the_stager() -> None:
    model = {k: v for k, v in BASE["model"].items() if k not in ("inputs", "outputs")}
    parsed = spec(model=model, gpu=None)
    assert inference.config_text(parsed) is None
    assert inference.configmap("serve", "ns", "uid-1", parsed)["data"] == {}
    init = deployment(parsed)["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["python", "-m", "lepton_workloads.stage_model"]
    assert "--instance-kind=KIND_CPU" in init["args"] and "--max-batch-size=16" in init["args"]
    assert "--dynamic-batching" in init["args"] and "--preferred-batch-sizes=4,8" in init["args"]
    assert not any(arg.startswith("--config=") for arg in init["args"])


def test_triton_container_ports_args_and_probes() -> None:
    container = triton(deployment())
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.08-py3"
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", 8000), ("grpc", 8001), ("metrics", 8002)]
    assert "--model-repository=/models" in container["args"]
    assert "--exit-timeout-secs=40" in container["args"]
    assert container["args"][-1] == "--log-verbose=1"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/models/resnet/ready", "port": "http"}
    assert "tcpSocket" not in container["readinessProbe"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # the default model load timeout


def test_grace_period_covers_exit_timeout_and_pre_stop() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    pre_stop = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= 40 + pre_stop


def test_gpu_scheduling_and_resources_come_from_render_common() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": 1}
    assert resources["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_claim_source_is_mounted_read_only_into_the_stager_with_the_config_map() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-source"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["model-config"]["configMap"]["name"] == "serve-model-config"
    init = pod["initContainers"][0]
    mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert mounts["model-source"]["subPath"] == "resnet/v3" and mounts["model-source"]["readOnly"]
    assert "--source=/lepton/source" in init["args"] and "--config=/lepton/config/config.pbtxt" in init["args"]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "model-repository", "mountPath": "/models", "readOnly": True}]


def test_uri_source_is_fetched_by_the_stager() -> None:
    pod = deployment(source=UriSource("https://models.example/resnet/"))["spec"]["template"]["spec"]
    assert "model-source" not in {v["name"] for v in pod["volumes"]}
    assert "--source=https://models.example/resnet/" in pod["initContainers"][0]["args"]


S3_SOURCE: dict[str, Any] = {
    "uri": "s3://models/exports/", "endpoint": "http://minio.storage:9000", "region": "eu-west-1",
    "secretRef": {"name": "model-keys", "keys": {"accessKeyId": "id", "secretAccessKey": "secret"}},
}  # fmt: skip


def test_uri_source_settings_and_credentials_reach_the_stager_by_reference_as_for_the_preparer() -> None:
    parsed = spec(model={**BASE["model"], "source": S3_SOURCE})
    source = inference.resolve_source(parsed, None)
    assert isinstance(source, UriSource) and source.secret_ref is not None and source.secret_ref.name == "model-keys"
    [stager] = deployment(parsed, source=source)["spec"]["template"]["spec"]["initContainers"]
    env = {item["name"]: item for item in stager["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "model-keys", "key": "id"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "model-keys", "key": "secret"}}
    assert env["LEPTON_S3_ENDPOINT"]["value"] == "http://minio.storage:9000" and env["AWS_REGION"]["value"] == "eu-west-1"
    assert all("value" not in item for name, item in env.items() if name.startswith("AWS_") and name != "AWS_REGION")
    # One helper for both pods: the preparer of a dataset with the same source gets the same entries.
    dataset = LeptonDatasetSpec.model_validate({"source": S3_SOURCE, "modality": "image"})
    [preparer] = render_dataset.prepare_job("d", "ns", "u", dataset)["spec"]["template"]["spec"]["containers"]
    assert [item for item in preparer["env"] if item["name"] in env] == stager["env"]


CA_SOURCE: dict[str, Any] = {"uri": "https://models.corp/resnet/", "caBundle": {"configMapRef": {"name": "corp-ca"}}}


def test_a_uri_source_ca_bundle_is_mounted_into_the_stager_only_the_same_way_as_for_the_preparer() -> None:
    parsed = spec(model={**BASE["model"], "source": CA_SOURCE})
    pod = deployment(parsed, source=inference.resolve_source(parsed, None))["spec"]["template"]["spec"]
    [stager] = pod["initContainers"]
    ca_mount = {"name": "source-ca", "mountPath": "/lepton/source-ca/corp-ca", "readOnly": True}
    assert ca_mount in stager["volumeMounts"]
    assert {"name": "LEPTON_SOURCE_CA_FILE", "value": "/lepton/source-ca/corp-ca/ca.crt"} in stager["env"]
    assert {"name": "source-ca", "configMap": {"name": "corp-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in pod["volumes"]
    assert all(mount["name"] != "source-ca" for mount in triton({"spec": {"template": {"spec": pod}}})["volumeMounts"])
    dataset = LeptonDatasetSpec.model_validate({"source": CA_SOURCE, "modality": "image"})
    preparer_pod = render_dataset.prepare_job("d", "ns", "u", dataset)["spec"]["template"]["spec"]
    [preparer] = preparer_pod["containers"]
    assert ca_mount in preparer["volumeMounts"] and [v for v in preparer_pod["volumes"] if v["name"] == "source-ca"] == [
        v for v in pod["volumes"] if v["name"] == "source-ca"
    ]


def test_stager_failures_reach_the_termination_message() -> None:
    for source in (SOURCE, UriSource("https://models.example/resnet/")):
        [stager] = deployment(source=source)["spec"]["template"]["spec"]["initContainers"]
        assert "--termination-log=/dev/termination-log" in stager["args"]
        assert stager["terminationMessagePath"] == "/dev/termination-log"
        assert stager["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert "env" not in stager  # no credentials, no S3 settings: nothing to pass
        assert all(volume["name"] != "source-ca" for volume in deployment(source=source)["spec"]["template"]["spec"]["volumes"])


def test_prometheus_scrape_annotations_and_labels() -> None:
    template = deployment()["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    assert template["metadata"]["labels"]["lepton.ai/inferenceservice"] == "serve"
    assert deployment()["spec"]["selector"]["matchLabels"] == inference.selector("serve")


def test_replicas_and_autoscaling_edits_leave_the_pod_template_identical() -> None:
    plain = deployment(spec(replicas=1), replicas=1)
    scaled = deployment(
        spec(replicas=5, autoscaling={"minReplicas": 0, "maxReplicas": 9, "target": 3, "scaleToZeroAfterSeconds": 60}),
        replicas=7,
    )
    assert plain["spec"]["template"] == scaled["spec"]["template"]
    assert (plain["spec"]["replicas"], scaled["spec"]["replicas"]) == (1, 7)


def test_model_config_edits_change_the_template() -> None:
    changed = spec(model={**BASE["model"], "maxBatchSize": 32})
    assert deployment()["spec"]["template"] != deployment(changed)["spec"]["template"]


def test_rollouts_never_drop_serving_replicas() -> None:
    assert deployment()["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_service_ports_and_owner() -> None:
    rendered = inference.service("serve", "ns", "uid-1")
    assert [(p["name"], p["port"]) for p in rendered["spec"]["ports"]] == [("http", 8000), ("grpc", 8001), ("metrics", 8002)]
    assert rendered["spec"]["selector"] == inference.selector("serve")
    assert rendered["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert inference.url("serve", "ns", "resnet") == "http://serve.ns.svc:8000/v2/models/resnet"


def test_pvc_uri_parsing() -> None:
    assert inference.parse_pvc_uri("pvc://ckpt/exports/model/") == ClaimSource("ckpt", "exports/model")
    assert inference.parse_pvc_uri("pvc://ckpt") == ClaimSource("ckpt", "")
    for bad in ("s3://bucket/x", "pvc:///path"):
        with pytest.raises(ValueError):
            inference.parse_pvc_uri(bad)


def job(phase: str | None, uri: str | None = None, export_format: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if uri:
        status["output"] = {"uri": uri}
    output = {"format": export_format} if export_format else {}
    return {"metadata": {"name": "train"}, "spec": {"image": "t", "output": output}, "status": status}


def test_training_job_source_waits_until_the_job_succeeded() -> None:
    parsed = spec(model={**BASE["model"], "source": {"trainingJobRef": {"name": "train"}}})
    expected = {
        None: ("TrainingJobNotFound", False),
        "Running": ("WaitingForTrainingJob", False),
        "Failed": ("TrainingJobFailed", True),
    }
    for phase, (reason, stalled) in expected.items():
        with pytest.raises(inference.SourceUnavailable) as raised:
            inference.resolve_source(parsed, None if phase is None else job(phase))
        assert (raised.value.reason, raised.value.stalled) == (reason, stalled)
    with pytest.raises(inference.SourceUnavailable, match="without status.output.uri"):
        inference.resolve_source(parsed, job("Succeeded"))
    with pytest.raises(inference.SourceUnavailable) as raised:
        inference.resolve_source(parsed, job("Succeeded", "s3://x/y"))
    assert raised.value.reason == "UnsupportedModelUri"
    assert inference.resolve_source(parsed, job("Succeeded", "pvc://ckpt/export")) == ClaimSource("ckpt", "export")


def test_a_training_job_exporting_another_format_than_the_service_serves_stalls_it() -> None:
    onnx = spec(model={**BASE["model"], "source": {"trainingJobRef": {"name": "train"}}, "format": "onnxruntime"})
    assert inference.resolve_source(onnx, job("Succeeded", "pvc://ckpt/export", "onnx")) == ClaimSource("ckpt", "export")
    for exported in (None, "torchscript"):  # the job's default format is torchscript
        with pytest.raises(inference.SourceUnavailable, match="exports torchscript, which Triton serves as pytorch_libtorch;"
                                                              " model.format is onnxruntime") as raised:  # fmt: skip
            inference.resolve_source(onnx, job("Running", None, exported))
        assert (raised.value.reason, raised.value.stalled) == ("ModelFormatMismatch", True)
    libtorch = spec(model={**BASE["model"], "source": {"trainingJobRef": {"name": "train"}}})
    with pytest.raises(inference.SourceUnavailable, match="exports onnx, which Triton serves as onnxruntime"):
        inference.resolve_source(libtorch, job("Succeeded", "pvc://ckpt/export", "onnx"))


def test_claim_and_uri_sources_resolve_without_a_job() -> None:
    assert inference.resolve_source(spec(), None) == SOURCE
    uri = spec(model={**BASE["model"], "source": {"uri": "https://m.example/r/"}})
    assert inference.resolve_source(uri, None) == UriSource("https://m.example/r/")


def test_replicas_from_spec_or_kept_within_autoscaling_bounds() -> None:
    assert inference.replicas(spec(replicas=3), 7) == 3
    scaled = spec(autoscaling={"minReplicas": 0, "maxReplicas": 5, "target": 2, "scaleToZeroAfterSeconds": 60})
    assert inference.replicas(scaled, None) == 1
    assert inference.replicas(scaled, 0) == 0
    assert inference.replicas(scaled, 4) == 4
    assert inference.replicas(scaled, 9) == 5
    assert inference.replicas(spec(autoscaling={"minReplicas": 2, "maxReplicas": 5, "target": 2}), 1) == 2


def test_the_triton_simulator_image_understands_the_rendered_command_line(tmp_path: Path) -> None:
    """The local overlay swaps only the image: the simulator's ``tritonserver`` must take these args."""
    from lepton_workloads.triton_simulator import tritonserver_args  # noqa: PLC0415 - imports torch

    container = triton(deployment())
    assert container["command"] == ["tritonserver"]
    (tmp_path / "resnet").mkdir()
    (tmp_path / "resnet" / "config.pbtxt").write_text("")
    args = [arg.replace(inference.MODEL_REPOSITORY, str(tmp_path)) for arg in container["args"]]
    own, ignored = tritonserver_args(args)
    assert own == [f"--model-repository={tmp_path}", "--model=resnet", "--host=0.0.0.0",
                   f"--http-port={inference.HTTP_PORT}", f"--metrics-port={inference.METRICS_PORT}",
                   f"--grpc-port={inference.GRPC_PORT}"]  # fmt: skip
    assert "--log-verbose=1" in ignored
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.pbtxt").write_text("")
    with pytest.raises(SystemExit, match="exactly one model"):
        tritonserver_args(args)


def test_triton_and_its_stager_pass_pod_security_restricted_as_triton_server() -> None:
    template = deployment()["spec"]["template"]["spec"]
    assert restricted_policy.violations(template) == []
    assert [c["name"] for c in template["initContainers"]] == ["stage-model"]
    assert template["securityContext"]["runAsUser"] == template["securityContext"]["runAsGroup"] == TRITON_UID
