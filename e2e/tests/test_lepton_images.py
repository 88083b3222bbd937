"""Unit tests of the shipped-image recipe's pure parts: the apt mirror, the base's trimming, keys, pruning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localcluster import images, lepton_images

DEB822 = """Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_the_base_comes_from_the_mirror_apt_uses() -> None:
    security_first = DEB822.split("\n\n")[1] + "\n\n" + DEB822.split("\n\n")[0]
    assert lepton_images.debian_mirror({"/etc/apt/sources.list.d/debian.sources": security_first}) == (
        "http://mirror.example/debian")
    one_line = "# comment\ndeb [signed-by=/k.gpg] http://other.example/debian bookworm main\n"
    assert lepton_images.debian_mirror({"/etc/apt/sources.list": one_line}) == "http://other.example/debian"
    unrelated = {"/etc/apt/sources.list.d/x.list": "deb https://packages.example/apt cloud-sdk-bookworm main\n"}
    assert lepton_images.debian_mirror(unrelated) == lepton_images.DEFAULT_MIRROR


def test_trimming_drops_docs_caches_devices_and_the_pep668_marker(tmp_path: Path) -> None:
    for rel in ("usr/share/doc/python3/copyright", "var/lib/apt/lists/x_Packages", "var/cache/apt/pkgcache.bin",
                "usr/lib/python3.11/EXTERNALLY-MANAGED", "usr/lib/python3.11/os.py", "dev/null", "etc/passwd"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    lepton_images.trim_rootfs(tmp_path)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["etc/passwd", "usr/lib/python3.11/os.py"]
    assert (tmp_path / "usr/share/doc").is_dir() and (tmp_path / "dev").is_dir()


def test_every_image_is_tagged_with_its_input_key_and_builds_on_an_earlier_one() -> None:
    assert lepton_images.ref_of("operator", "abc") == "localhost/lepton-operator:abc"
    order = [lepton_images.PYTHON_BASE] + [build.name for build in lepton_images.BUILDS]
    for index, build in enumerate(lepton_images.BUILDS, start=1):
        assert build.base in order[:index]


def test_pruning_keeps_the_most_recently_used_archives_of_each_image(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path))
    archives = []
    for age, key in enumerate(["k3", "k2", "k1"]):
        archive = images.archive_path(f"localhost/lepton-workloads:{key}", key)
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_text(key)
        archive.with_suffix(".lock").touch()
        os.utime(archive, (1000 - age, 1000 - age))
        archives.append(archive)
    other = images.archive_path("localhost/lepton-workloads-extra:k9", "k9")
    other.write_text("another image's archive, not a sibling")
    os.utime(other, (1, 1))
    current = images.Image("localhost/lepton-workloads:k1", archives[2])
    unstored: list[str] = []
    monkeypatch.setattr(images, "remove_from_storage", unstored.append)
    removed = lepton_images.prune([current], count=2)
    assert removed == [archives[1]]  # k1 is in use now, k3 was used most recently before it
    assert unstored == ["localhost/lepton-workloads:k2"]  # and its image leaves buildah's storage
    assert archives[0].is_file() and archives[2].is_file() and other.is_file()
    assert not archives[1].with_suffix(".lock").exists()


def test_a_node_keeps_only_the_builds_it_was_last_given() -> None:
    built = {"operator": images.Image("localhost/lepton-operator:new", Path("op.tar")),
             "workloads": images.Image("localhost/lepton-workloads:w2", Path("w.tar"))}  # fmt: skip
    held = ["localhost/lepton-operator:old", "localhost/lepton-operator:new", "localhost/lepton-operator:local",
            "localhost/lepton-workloads:w1", "localhost/lepton-workloads:w2", "localhost/lepton-workloads-extra:x",
            "localhost/lepton/pause:1", "localhost/lepton-triton-simulator:s1", "sha256:0123"]  # fmt: skip
    assert lepton_images.stale_refs(held, built) == ["localhost/lepton-operator:old", "localhost/lepton-workloads:w1"]
