"""Generated sample data (multimodal records, an exported TorchScript model) and subprocess runners, shared by tests."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_workloads.demo_data import png, wav
from localcluster.kube import wait_until

WORKLOADS = Path(__file__).resolve().parents[1]


def make_images(root: Path, count: int) -> None:
    (root / "img").mkdir(parents=True)
    lines = ["file,label"]
    for i in range(count):
        (root / "img" / f"{i:04d}.png").write_bytes(png(8, 8, i))
        lines.append(f"img/{i:04d}.png,{i % 3}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def make_audio(root: Path, count: int) -> None:
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"utt{i:03d}.wav").write_bytes(wav(400, i + 1))
        (root / f"utt{i:03d}.txt").write_text(f"utterance number {i}\n")


def make_text(root: Path, count: int) -> None:
    root.mkdir(parents=True)
    (root / "part-0.jsonl").write_text("".join(json.dumps({"id": i, "text": f"line {i}"}) + "\n" for i in range(count)))


def wait_until_serving(
    server: subprocess.Popen[bytes], url: str, timeout: float, log: Path | None = None, context: ssl.SSLContext | None = None
) -> None:
    """Return once ``url`` answers at all (any HTTP status); kill ``server`` and raise if it never does.

    ``context``: how to verify an https ``url`` (a test CA's), the default trust when ``None``.
    """

    def answers() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {server.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1, context=context).close()  # noqa: S310
        except urllib.error.HTTPError:
            return True  # an error status is an answer (S3 says 403 to an unsigned request)
        except OSError:
            return False
        return True

    try:
        wait_until(answers, timeout, f"{url} to answer", interval=0.05)
    except (AssertionError, RuntimeError) as error:
        server.kill()
        detail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{error}\n{detail}") from None


def run_preparer(tmp_path: Path, **env: str) -> tuple[int, dict[str, Any], Path]:
    """Run ``python -m lepton_workloads.prepare`` with the Job's environment; (exit code, result, output)."""
    output = tmp_path / "out"
    result = tmp_path / "termination-log"
    environment = {
        **os.environ, "PYTHONPATH": str(WORKLOADS), "LEPTON_OUTPUT_DIR": str(output),
        "LEPTON_RESULT_PATH": str(result), "LEPTON_PROGRESS_PORT": "0", **env,
    }  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-m", "lepton_workloads.prepare"], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.is_file(), completed.stderr
    return completed.returncode, json.loads(result.read_text()), output




def export_model(output_dir: Path, name: str) -> Path:
    """A real TorchScript model (4 inputs, 2 outputs) exported as a TrainingJob exports it; its directory.

    ``<output_dir>/<name>/1/model.pt`` and ``<output_dir>/<name>/config.pbtxt``, written by ``export.write``.
    """
    import torch

    from lepton_workloads import export

    torch.manual_seed(0)
    return export.write(torch.nn.Linear(4, 2), (4,), output_dir, name, max_batch_size=4)


@dataclass(frozen=True)
class StagerRun:
    """What one run of the stager left: exit code, stderr, the termination message, the repository."""

    code: int
    stderr: str
    termination: str
    repository: Path


def run_stager(tmp_path: Path, source: str, *extra: str, **env: str) -> StagerRun:
    """Run ``python -m lepton_workloads.stage_model`` as the init container does (environment included)."""
    repository = tmp_path / "models"
    log = tmp_path / "termination-log"
    arguments = [
        f"--source={source}", f"--model-repository={repository}", "--name=served", "--format=pytorch_libtorch",
        "--max-batch-size=16", "--instance-count=2", "--instance-kind=KIND_CPU", f"--termination-log={log}", *extra,
    ]  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-m", "lepton_workloads.stage_model", *arguments],
        env={**os.environ, "PYTHONPATH": str(WORKLOADS), **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    termination = log.read_text() if log.exists() else ""
    return StagerRun(completed.returncode, completed.stderr, termination, repository)
