"""The DDP trainer for real: torchrun with 2 CPU processes (gloo) over generated shards.

A rank is killed mid-run (the trainer's fault injection), the run is started again and must
resume from the last checkpoint; the export must load with torch and its config.pbtxt parse
with Triton's schema, and an ONNX export must compute in ONNX Runtime what the trained torch
model does. While a run trains, rank 0's ``/progress`` must show the step advancing.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch

from PIL import Image

from lepton_workloads import demo_data, progress_server, shards, train, triton_config
from lepton_workloads.checkpoints import candidates, name_of, read
from localcluster.kube import wait_until
from localcluster.lepton import free_port
from sample_data import png, run_preparer

WORKLOADS = Path(train.__file__).resolve().parent.parent


def make_dataset(root: Path, shape: tuple[int, ...], count: int, shards_count: int, seed: int = 0) -> None:
    """Two linearly separable classes: the label is the sign of a fixed projection."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=int(np.prod(shape)))
    writer = shards.ShardWriter(root, "train", records_per_shard=-(-count // shards_count))
    for index in range(count):
        features = rng.normal(size=shape).astype(np.float32)
        label = int(features.reshape(-1) @ direction > 0)
        buffer = io.BytesIO()
        np.save(buffer, features)
        writer.add(f"{index:06d}", {"npy": buffer.getvalue(), "cls": str(label).encode()})
    manifest = shards.Manifest(modality="tabular", source="generated", shards=tuple(writer.close()),
                               extra={"classes": 2, "shape": list(shape)})  # fmt: skip
    shards.write_manifest(root, manifest)


def torchrun_command(nproc: int, *args: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--max-restarts=0", "-m", "lepton_workloads.train", *args]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": f"{WORKLOADS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "OMP_NUM_THREADS": "1", progress_server.PORT_ENV: "0", **env}  # fmt: skip
    return command, full_env


def torchrun(nproc: int, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command, full_env = torchrun_command(nproc, *args, env=env)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_two_process_ddp_trains_resumes_after_a_killed_rank_and_exports(tmp_path: Path) -> None:
    data, checkpoints, output = tmp_path / "data", tmp_path / "ckpt", tmp_path / "out"
    make_dataset(data, (8,), 512, 4)
    env = {"LEPTON_DATASET_DIR": str(data), "LEPTON_CHECKPOINT_DIR": str(checkpoints), "LEPTON_OUTPUT_DIR": str(output),
           "LEPTON_CHECKPOINT_EVERY_STEPS": "10", "LEPTON_TERMINATION_LOG": str(tmp_path / "termination-log")}  # fmt: skip
    common = ("--epochs", "4", "--batch-size", "16", "--model-name", "sep", "--log-every", "1")

    crashed = torchrun(2, *common, "--crash-at-step", "25", env=env)
    assert crashed.returncode != 0, crashed.stdout[-2000:]
    assert "crashing at step 25" in crashed.stdout + crashed.stderr
    assert [p.name for p in candidates(checkpoints)] == [name_of(20), name_of(10)]  # every 10 steps, 2 kept
    assert read(checkpoints / name_of(20))["step"] == 20
    assert not (output / "sep").exists()

    # The same command line again, as a restarted group runs it: resumed, it does not crash again.
    finished = torchrun(2, *common, "--crash-at-step", "25", env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    progress = json.loads((checkpoints / "progress.json").read_text())
    # 512 samples, 2 ranks, batches of 16: 16 steps an epoch, 64 in 4 epochs; resumed at 20, not 0.
    assert progress["resumedFrom"] == 20 and progress["step"] == 64
    assert progress["loss"] < progress["firstLoss"] * 0.7, progress
    assert json.loads((tmp_path / "termination-log").read_text()) == train.progress_document(progress)
    assert progress["step"] == 64

    model = torch.jit.load(str(output / "sep" / "1" / "model.pt"))
    assert model(torch.zeros(3, 8)).shape == (3, 2)
    config = triton_config.from_protobuf(triton_config.parse((output / "sep" / "config.pbtxt").read_text()))
    assert (config.name, config.format) == ("sep", "pytorch_libtorch")
    assert config.inputs[0].dims == (8,) and config.outputs[0].dims == (2,)


def test_a_torn_checkpoint_is_skipped_and_the_steps_continue_from_the_one_before(tmp_path: Path) -> None:
    """A checkpoint truncated as a crash before the fsync would leave it: the run resumes from the previous
    one, says so in its log, its progress and its termination message, and overwrites the torn one."""
    data, checkpoints, log = tmp_path / "data", tmp_path / "ckpt", tmp_path / "termination-log"
    make_dataset(data, (8,), 128, 1)
    env = {"LEPTON_DATASET_DIR": str(data), "LEPTON_CHECKPOINT_DIR": str(checkpoints),
           "LEPTON_CHECKPOINT_EVERY_STEPS": "5", "LEPTON_TERMINATION_LOG": str(log)}  # fmt: skip
    # 128 samples, batches of 16: 8 steps an epoch, 24 in 3; crashing at 12 leaves checkpoints 5 and 10.
    common = ("--epochs", "3", "--batch-size", "16", "--log-every", "1", "--crash-at-step", "12")
    crashed = torchrun(1, *common, env=env)
    assert crashed.returncode != 0 and "crashing at step 12" in crashed.stdout, crashed.stdout[-2000:]
    torn = checkpoints / name_of(10)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])

    finished = torchrun(1, *common, env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"{name_of(10)} is torn (sha256" in finished.stdout
    assert f"resumed from {name_of(5)} (step 5)" in finished.stdout
    reports = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    assert reports[0]["step"] == 6 and reports[-1]["step"] == 24  # on from step 5, not from 0 nor 10
    assert all(r["resumedFrom"] == 5 and r["tornCheckpoints"] == [name_of(10)] for r in reports)
    reported = json.loads(log.read_text())
    assert (reported["step"], reported["resumedFrom"], reported["tornCheckpoints"]) == (24, 5, [name_of(10)])
    assert [p.name for p in candidates(checkpoints)] == [name_of(24), name_of(20)]
    assert read(checkpoints / name_of(24))["epoch"] == 3


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_single_process_cnn_on_images_exports_a_traced_model(tmp_path: Path) -> None:
    data, output = tmp_path / "data", tmp_path / "out"
    make_dataset(data, (1, 8, 8), 64, 2)
    result = torchrun(1, "--model", "cnn", "--epochs", "1", "--batch-size", "16", "--dataset-dir", str(data),
                      "--output-dir", str(output), "--model-name", "img", env={})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    model = torch.jit.load(str(output / "img" / "1" / "model.pt"))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 2)
    assert triton_config.parse((output / "img" / "config.pbtxt").read_text()).input[0].dims == [1, 8, 8]


def test_two_process_ddp_exports_onnx_that_onnx_runtime_runs_like_the_trained_torch_model(tmp_path: Path) -> None:
    """The operator's contract: ``LEPTON_OUTPUT_FORMAT=onnx`` (spec.output.format) picks the export."""
    data, checkpoints, output = tmp_path / "data", tmp_path / "ckpt", tmp_path / "out"
    make_dataset(data, (8,), 128, 2)
    env = {"LEPTON_DATASET_DIR": str(data), "LEPTON_CHECKPOINT_DIR": str(checkpoints), "LEPTON_OUTPUT_DIR": str(output),
           "LEPTON_OUTPUT_FORMAT": "onnx"}  # fmt: skip
    result = torchrun(2, "--epochs", "2", "--batch-size", "16", "--model-name", "sep", "--max-batch-size", "16", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in (output / "sep" / "1").iterdir()) == ["model.onnx"]

    # The trained weights (the final checkpoint) in the torch model, against the ONNX graph in ONNX Runtime.
    state = read(checkpoints / name_of(8))
    assert state["step"] == 8  # 128 samples, 2 ranks, batches of 16, 2 epochs
    model = train.build_model("mlp", (8,), 64, 2).eval()
    model.load_state_dict(state["model"])
    session = onnxruntime.InferenceSession(str(output / "sep" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    (logits,) = session.run(["OUTPUT__0"], {"INPUT__0": inputs})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(torch.from_numpy(inputs)).numpy(), rtol=1e-4, atol=1e-5)

    text = (output / "sep" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text
    config = triton_config.from_protobuf(triton_config.parse(text))
    assert (config.name, config.format, config.max_batch_size) == ("sep", "onnxruntime", 16)
    assert [(t.name, t.data_type, t.dims) for t in (*config.inputs, *config.outputs)] == [
        ("INPUT__0", "TYPE_FP32", (8,)), ("OUTPUT__0", "TYPE_FP32", (2,))]  # fmt: skip
    assert [i.name for i in session.get_inputs()] == ["INPUT__0"] and session.get_inputs()[0].shape[1:] == [8]


def test_an_unknown_output_format_fails_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_OUTPUT_FORMAT", "savedmodel")
    with pytest.raises(SystemExit):
        train.parse_args([])
    monkeypatch.setenv("LEPTON_OUTPUT_FORMAT", "onnx")
    assert train.parse_args([]).output_format == "onnx"
    assert train.parse_args(["--output-format", "torchscript"]).output_format == "torchscript"


@pytest.mark.parametrize(("mine", "peer"), [(20, 20), (20, 10), (10, 20), (0, 20)])
def test_ranks_that_resumed_from_different_steps_all_stop(monkeypatch: pytest.MonkeyPatch, mine: int, peer: int) -> None:
    """The all-reduce is simulated: this rank and one peer, whose (step, -step) it takes the maximum with."""

    def all_reduce(tensor: torch.Tensor, op: object) -> None:
        assert op == torch.distributed.ReduceOp.MAX
        tensor.copy_(torch.maximum(tensor, torch.tensor([peer, -peer])))

    monkeypatch.setattr(train.dist, "all_reduce", all_reduce)
    if mine == peer:
        assert train.check_same_step(mine, torch.device("cpu")) is None
    else:
        with pytest.raises(RuntimeError, match=rf"steps {min(mine, peer)} to {max(mine, peer)}\); this one from {mine}"):
            train.check_same_step(mine, torch.device("cpu"))


def test_fewer_than_two_kept_checkpoints_is_refused() -> None:
    """With one kept, a torn newest checkpoint would have nothing to fall back to."""
    with pytest.raises(SystemExit):
        train.parse_args(["--keep-checkpoints", "1"])
    assert train.parse_args([]).keep_checkpoints == 2
    assert train.parse_args(["--keep-checkpoints", "5"]).keep_checkpoints == 5


def test_rank_zero_serves_its_step_live_while_two_processes_train(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_dataset(data, (8,), 512, 4)
    port = free_port()
    command, env = torchrun_command(2, "--dataset-dir", str(data), "--epochs", "100000", "--batch-size", "16",
                                    "--log-every", "1000000", env={progress_server.PORT_ENV: str(port)})  # fmt: skip
    log = tmp_path / "torchrun.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/progress"

    def step_after(previous: int) -> dict[str, Any] | None:
        if process.poll() is not None:
            raise AssertionError(f"the trainer exited ({process.returncode}): {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                document: dict[str, Any] = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            return None  # not serving yet (torch imports, process group)
        return document if document["step"] > previous else None

    try:
        first = wait_until(lambda: step_after(0), 120, "rank 0 to report a first step")
        later = wait_until(lambda: step_after(first["step"]), 60, "the reported step to advance")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    assert first["schema"] == later["schema"] == train.PROGRESS_SCHEMA
    assert later["step"] > first["step"] >= 1 and isinstance(later["loss"], float)
    assert "progress endpoint disabled" not in log.read_text()  # rank 1 never tried to bind the port too


def test_dataset_shape_needs_classes(tmp_path: Path) -> None:
    writer = shards.ShardWriter(tmp_path, "train", records_per_shard=4)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3, dtype=np.float32))
    writer.add("000000", {"npy": buffer.getvalue(), "cls": b"1"})
    manifest = shards.Manifest(modality="tabular", source="x", shards=tuple(writer.close()))
    assert train.dataset_shape(tmp_path, manifest, "train", 5) == ((3,), 5)
    with pytest.raises(ValueError, match="number of classes"):
        train.dataset_shape(tmp_path, manifest, "train", None)


def image_bytes(mode: str, size: tuple[int, int], colour: int | tuple[int, int, int], kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, kind)
    return buffer.getvalue()


def test_decoder_turns_images_into_planes_of_the_first_samples_mode_and_size() -> None:
    grey = train.Decoder(labels=("bird", "cat", "dog"), mode="L", size=(8, 8))
    features, label = grey({"png": png(8, 8, 255), "cls": b"dog\n"})
    assert features.shape == (1, 8, 8) and features.dtype == np.float32 and float(features.max()) == 1.0
    assert label == 2
    colour = train.Decoder(mode="RGB", size=(4, 4))
    features, label = colour({"jpg": image_bytes("RGB", (16, 10), (255, 0, 0), "JPEG"), "cls": b"1"})
    assert features.shape == (3, 4, 4) and label == 1  # resized, channels first
    assert features[0].mean() > 0.9 and features[1].mean() < 0.1
    with pytest.raises(ValueError, match="not among the manifest's labels"):
        grey({"png": png(8, 8, 0), "cls": b"fish"})
    with pytest.raises(ValueError, match="needs npy or an image field"):
        grey({"txt": b"x", "cls": b"cat"})


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_the_quickstart_data_prepared_as_multimodal_trains_a_cnn_with_named_labels(tmp_path: Path) -> None:
    """The quickstart's data path: demo records (png + cls + wav + txt) -> the real preparer -> the real trainer."""
    demo_data.write_records(tmp_path / "claim" / "demo", 60)
    code, result, data = run_preparer(tmp_path, LEPTON_SOURCE_URI="pvc://raw/demo", LEPTON_MODALITY="multimodal",
                                      LEPTON_SOURCE_ROOT=str(tmp_path / "claim"), LEPTON_SHARD_COUNT="2")  # fmt: skip
    assert code == 0, result
    manifest, _ = shards.read_manifest(data)
    assert manifest.extra["labels"] == ["bird", "cat", "dog"]

    output = tmp_path / "model-repository"
    trained = torchrun(1, "--model", "cnn", "--epochs", "15", "--batch-size", "8", "--lr", "0.02", "--dataset-dir", str(data),
                       "--output-dir", str(output), "--model-name", "pets", "--log-every", "1", env={})  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    model = torch.jit.load(str(output / "pets" / "1" / "model.pt"))
    shades = [50 + 75 * demo_data.CLASSES.index(name) for name in ("cat", "dog", "bird")]
    size = demo_data.SIZE
    inputs = torch.tensor(shades, dtype=torch.float32).reshape(3, 1, 1, 1).expand(3, 1, size, size) / 255
    predicted = [manifest.extra["labels"][i] for i in model(inputs).argmax(dim=1).tolist()]
    assert predicted == ["cat", "dog", "bird"]  # it learned the images, under their names
    assert triton_config.parse((output / "pets" / "config.pbtxt").read_text()).input[0].dims == [1, size, size]
