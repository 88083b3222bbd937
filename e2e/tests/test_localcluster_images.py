"""Unit tests of the image plumbing's pure parts: input keys, Dockerfile sources, OCI archives."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from localcluster import images


def test_dockerfile_sources_reads_copy_and_add_but_not_other_stages() -> None:
    text = ("ARG BASE=x\nFROM ${BASE}\nCOPY pyproject.toml README.md ./\n"
            "COPY --chown=1:1 operator \\\n  ./operator\nADD [\"workloads\", \"/w\"]\n"
            "COPY --from=builder /out /out\nRUN echo COPY nothing\n")
    assert images.dockerfile_sources(text) == ["pyproject.toml", "README.md", "operator", "workloads"]


def test_dockerignore_matcher_handles_double_star_directories_and_negation() -> None:
    ignored = images.dockerignore_matcher("# comment\n**/__pycache__\noperator/tests\n*.md\n!README.md\n")
    assert ignored("operator/pkg/__pycache__/x.pyc")
    assert ignored("operator/tests/test_a.py")
    assert ignored("NOTES.md") and not ignored("README.md")
    assert not ignored("operator/pkg/a.py")


def _context(tmp_path: Path) -> Path:
    (tmp_path / "src" / "tests").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("a = 1\n")
    (tmp_path / "src" / "tests" / "t.py").write_text("t = 1\n")
    (tmp_path / "unused.txt").write_text("not copied\n")
    (tmp_path / ".dockerignore").write_text("src/tests\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY src /src\n")
    return tmp_path


def test_context_key_covers_copied_files_only(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    key = images.context_key(ctx / "Dockerfile", ctx)
    (ctx / "unused.txt").write_text("changed\n")
    (ctx / "src" / "tests" / "t.py").write_text("ignored change\n")
    assert images.context_key(ctx / "Dockerfile", ctx) == key
    (ctx / "src" / "a.py").write_text("a = 2\n")
    assert images.context_key(ctx / "Dockerfile", ctx) != key
    changed_dockerfile = images.context_key(ctx / "Dockerfile", ctx)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY src /app\n")
    assert images.context_key(ctx / "Dockerfile", ctx) != changed_dockerfile


def test_input_key_hashes_paths_by_content(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("one")
    key = images.input_key("x", f)
    assert images.input_key("x", f) == key and len(key) == 16
    f.write_text("two")
    assert images.input_key("x", f) != key
    assert images.input_key("y", f) != images.input_key("x", f)


def test_scratch_archive_is_reproducible_and_names_its_ref(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "tool").write_text("#!/bin/sh\n")
    (rootfs / "bin" / "tool").chmod(0o755)
    (rootfs / "bin" / "alias").symlink_to("tool")
    config = images.ImageConfig(entrypoint=["/bin/tool"], user="65532")
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    images.write_oci_archive(rootfs, first, "localhost/t:1", config)
    (rootfs / "bin" / "tool").touch()  # a new mtime must not change the image
    images.write_oci_archive(rootfs, second, "localhost/t:1", config)
    assert first.read_bytes() == second.read_bytes()
    digest = images.archive_digest(first)
    with tarfile.open(first) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{digest[7:]}"))  # type: ignore[arg-type]
        cfg = json.load(tar.extractfile(f"blobs/sha256/{manifest['config']['digest'][7:]}"))  # type: ignore[arg-type]
        layer = tar.extractfile(f"blobs/sha256/{manifest['layers'][0]['digest'][7:]}")
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            members = {m.name: m for m in inner.getmembers()}
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "localhost/t:1"
    assert cfg["config"]["Entrypoint"] == ["/bin/tool"] and cfg["config"]["User"] == "65532"
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "tool"
    assert members["bin/tool"].mode & 0o111 and members["bin/tool"].mtime == 0


def test_cached_produces_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path))
    calls: list[Path] = []

    def produce(out: Path) -> None:
        calls.append(out)
        out.write_text("archive")

    first = images.cached("localhost/lepton/x:1", "k1", produce)
    second = images.cached("localhost/lepton/x:1", "k1", produce)
    assert first == second and len(calls) == 1 and first.archive.read_text() == "archive"
    assert images.cached("localhost/lepton/x:1", "k2", produce).archive != first.archive
