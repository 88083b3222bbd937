"""Lepton's shipped images, built here from the project's own Dockerfiles (``images/``).

The files users build are the files tested: ``images/operator``, ``images/workloads`` and
``images/triton-simulator`` are built with ``buildah bud`` through the generic image module
(``localcluster.images``), each on a base given as the ``BASE`` build argument:

* **python-base** (``localhost/lepton-python-base``): Debian ``bookworm`` minbase with python3,
  pip and ``python`` made by debootstrap from the mirror apt is configured with — the stand-in
  for ``python:3.11-slim`` that no registry can give us. Trimmed (docs, man pages, locales, apt
  lists and caches) and without Debian's PEP 668 ``EXTERNALLY-MANAGED`` marker, so Dockerfiles
  written for the slim image run unchanged. Cached by suite, packages and
  :data:`BASE_RECIPE`.
* **operator**, **workloads** on python-base; **triton-simulator** on workloads.

Every image is cached as an OCI archive keyed by all of its inputs (Dockerfile, the files it
copies, build args, the base's digest), and tagged with that key
(``localhost/lepton-operator:<key>``), so a manifest naming the tag names exactly one build and
a changed image rolls a Deployment. ``pip install`` inside a build reaches PyPI through the
host's CA bundle, mounted read-only for ``RUN`` steps (the Dockerfiles stay as users need them).

The Dockerfiles install their dependencies in a layer of their own, from ``pyproject.toml``
alone, and buildah keeps layers (``layers=True``: the images stay in the private buildah
storage too), so a code change rebuilds only the small layers above the 4.7 GB of torch and
CUDA wheels. Old builds are pruned, archive and stored image: the :data:`KEEP_ARCHIVES` most
recently used of each image stay. A node's containerd keeps only the builds it was last given
(:func:`stale_refs`): every earlier one is gigabytes, and a disk filled by them makes the
kubelet reclaim images, the pause image among them, which stops every new pod on the node.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster import build, images, netns, realnode
from localcluster.build import log
from localcluster.cluster import CLUSTER_NAME, MODE_KIND, MODE_LOCAL, Cluster
from localcluster.paths import repo_root

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates")
#: Bump when :func:`populate_base` changes what it produces.
BASE_RECIPE = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: The host's CA bundle: PyPI's TLS chain on these machines needs it inside ``RUN pip install``.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
REGISTRY = "localhost"
PREFIX = "lepton-"
KEEP_ARCHIVES = 2
#: What a debootstrap'ed tree does not need in an image.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
        "var/cache/apt", "var/lib/apt/lists", "var/log", "var/cache/debconf/templates.dat-old")  # fmt: skip


@dataclass(frozen=True)
class Build:
    """One shipped image: its Dockerfile and the image its ``BASE`` argument names."""

    name: str
    dockerfile: str
    base: str


PYTHON_BASE = "python-base"
BUILDS: tuple[Build, ...] = (
    Build("operator", "images/operator/Dockerfile", PYTHON_BASE),
    Build("workloads", "images/workloads/Dockerfile", PYTHON_BASE),
    Build("triton-simulator", "images/triton-simulator/Dockerfile", "workloads"),
)


def repository(name: str) -> str:
    """``operator`` -> ``localhost/lepton-operator``."""
    return f"{REGISTRY}/{PREFIX}{name}"


def ref_of(name: str, key: str) -> str:
    return f"{repository(name)}:{key}"


# ---------------------------------------------------------------------------------------------
# the python base (debootstrap)


def debian_mirror(sources: Mapping[str, str], suite: str = SUITE) -> str:
    """The Debian mirror apt uses for ``suite`` (deb822 ``.sources`` or one-line ``.list`` texts)."""
    for text in sources.values():
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
            suites, uris = fields.get("Suites", "").split(), fields.get("URIs", "").split()
            if suite in suites and uris and "security" not in uris[0]:
                return str(uris[0])
        for line in text.splitlines():
            parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                return str(parts[1])
    return DEFAULT_MIRROR


def apt_sources(root: Path = Path("/etc/apt")) -> dict[str, str]:
    """The texts of apt's source files, by path."""
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*"))]
    return {str(f): f.read_text(errors="replace") for f in files if f.is_file()}


def trim_rootfs(root: Path) -> None:
    """Drop what an image does not need, and Debian's PEP 668 marker (pip installs system-wide)."""
    for rel in TRIM:
        target = root / rel
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
        elif target.exists():
            target.unlink()
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for device in (root / "dev").iterdir() if (root / "dev").is_dir() else []:
        device.unlink() if not device.is_dir() or device.is_symlink() else shutil.rmtree(device)


def populate_base(root: Path, mirror: str | None = None) -> None:
    """``debootstrap --variant=minbase`` the suite with :data:`BASE_PACKAGES` into ``root``, trimmed."""
    if shutil.which("debootstrap") is None:
        raise images.ImageError("`debootstrap` is not installed (make tools installs it)")
    target = root / "rootfs"  # debootstrap wants to create its target's contents itself
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(target),
            mirror or debian_mirror(apt_sources())]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise images.ImageError(f"debootstrap failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    trim_rootfs(target)
    for entry in target.iterdir():
        entry.rename(root / entry.name)
    target.rmdir()


BASE_CONFIG = images.ImageConfig(
    env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    cmd=("python3",),
)


def python_base() -> images.Image:
    """The local python base image, built by debootstrap once per recipe."""
    key = images.input_key(SUITE, ",".join(BASE_PACKAGES), BASE_RECIPE, repr(BASE_CONFIG))
    return images.from_rootfs(ref_of(PYTHON_BASE, key), key, populate_base, BASE_CONFIG)


# ---------------------------------------------------------------------------------------------
# the shipped images


def build_one(build: Build, base: images.Image, context: Path) -> images.Image:
    """``buildah bud`` of one shipped Dockerfile on ``base``, tagged with its input key."""
    dockerfile = context / build.dockerfile
    bases = {"BASE": base}
    key = images.dockerfile_key(dockerfile, context, bases=bases)
    volumes = [f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if Path(CA_BUNDLE).is_file() else []
    return images.from_dockerfile(ref_of(build.name, key), dockerfile, context, bases=bases, volumes=volumes,
                                  layers=True)  # fmt: skip


def prune(keep: Sequence[images.Image], count: int = KEEP_ARCHIVES) -> list[Path]:
    """Delete all but the ``count`` most recently used archives of each image in ``keep``."""
    removed: list[Path] = []
    for image in keep:
        os.utime(image.archive)  # "used now": the mtime orders the archives by last use
        stem = image.archive.name.rsplit("-", 1)[0]
        siblings = sorted(image.archive.parent.glob(f"{stem}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [p for p in siblings if p.name.rsplit("-", 1)[0] == stem][count:]:
            old.unlink(missing_ok=True)
            old.with_suffix(".lock").unlink(missing_ok=True)
            images.remove_from_storage(f"{image.ref.rsplit(':', 1)[0]}:{old.stem.rsplit('-', 1)[1]}")
            removed.append(old)
    return removed


LOCAL_TAG = "local"


def import_into(ctr: Sequence[str], built: Mapping[str, images.Image],
                progress: Callable[[str], None] = log) -> list[str]:  # fmt: skip
    """Import into a node's containerd what it lacks; tag every image ``local`` too (the overlays' tag).

    ``ctr`` is the argv prefix of ``ctr`` against that containerd (namespace ``k8s.io``).
    """
    started = time.monotonic()
    imported = images.import_images(list(built.values()), ctr)
    if imported:
        progress(f"imported {', '.join(imported)} in {time.monotonic() - started:.1f} s")
    for name, image in built.items():
        tag = [*ctr, "images", "tag", "--force", image.ref, f"{repository(name)}:{LOCAL_TAG}"]
        proc = subprocess.run(tag, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise images.ImageError(f"tagging {image.ref} {LOCAL_TAG} failed: {proc.stderr.strip()}")
    stale = stale_refs(images.containerd_digests(ctr), built)
    if stale:  # gigabytes each (torch): left there, a few code changes fill the disk and the kubelet evicts
        subprocess.run([*ctr, "images", "rm", "--sync", *stale], capture_output=True, text=True, timeout=600)
        progress(f"removed older builds from the node: {', '.join(stale)}")
    return imported


def stale_refs(held: Iterable[str], built: Mapping[str, images.Image]) -> list[str]:
    """The references in ``held`` to earlier builds of the images in ``built`` (not the current key, not ``local``)."""
    current = {image.ref for image in built.values()} | {f"{repository(name)}:{LOCAL_TAG}" for name in built}
    repositories = {repository(name) for name in built}
    return sorted(ref for ref in held if ref.rsplit(":", 1)[0] in repositories and ref not in current)


def load(cluster: Cluster, built: Mapping[str, images.Image]) -> None:
    """Make ``built`` runnable on ``cluster``'s nodes (``imagePullPolicy: Never``).

    The local cluster: imported into the real node's containerd. kind: ``kind load
    image-archive`` (its nodes run containerd, which takes OCI archives). Any other cluster
    pulls from a registry, which these tests do not push to.
    """
    if cluster.mode == MODE_LOCAL:
        import_into(realnode.ctr_argv(netns.instance()), built)
    elif cluster.mode == MODE_KIND:
        for image in built.values():
            argv = [str(build.ensure_kind()), "load", "image-archive", str(image.archive), "--name", CLUSTER_NAME]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                raise images.ImageError(f"kind load image-archive {image.archive} failed: {proc.stderr.strip()}")
    else:
        raise images.ImageError(f"the images built here cannot be loaded into a {cluster.mode!r} cluster; "
                                "push them to a registry it pulls from, or run on the local cluster or kind")


def ensure_images(context: Path | None = None, progress: Callable[[str], None] = log) -> dict[str, images.Image]:
    """Every shipped image (and the base), built when its inputs changed; by name."""
    context = context or repo_root()
    built: dict[str, images.Image] = {}
    for name, make in [(PYTHON_BASE, python_base),
                       *((b.name, lambda b=b: build_one(b, built[b.base], context)) for b in BUILDS)]:  # fmt: skip
        started = time.monotonic()
        built[name] = make()
        size = built[name].archive.stat().st_size / 2**20
        progress(f"image {built[name].ref}: {time.monotonic() - started:.1f} s ({size:.0f} MiB archive)")
    for old in prune(list(built.values())):
        progress(f"removed an old image archive: {old.name}")
    return built
