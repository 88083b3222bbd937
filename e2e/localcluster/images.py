"""Container images without a registry: build once, cache the OCI archive by its inputs, import.

No image can be pulled on the project's machines, so every image the real node runs is built
here and handed to the node's containerd as a file. Three steps, each reusable by any image:

* **build** — either

  - :func:`from_rootfs`: a ``FROM scratch`` image made of a directory tree that a callback fills
    (the pause program, busybox, CoreDNS, a debootstrap'ed Debian). Written by
    :func:`write_oci_archive` in plain Python: reproducible (sorted entries, mtime 0, uid 0), no
    buildah storage and no mounts involved; or
  - :func:`from_dockerfile`: ``buildah bud`` of a project Dockerfile, always with
    ``--network host`` (buildah's default network would build a bridge in the host's namespace),
    ``--pull=never`` and ``--isolation chroot``; build args (a base image is passed as
    ``--build-arg BASE=oci-archive:<tar>``, see :meth:`Image.build_arg`) and extra volumes (e.g.
    the host CA bundle for ``pip install``). buildah keeps its storage under the cache
    (``<cache>/buildah``), never the host default, and each invocation runs in a throw-away mount
    namespace (``unshare --mount``) so its overlay mounts vanish with it. The result is exported
    with ``buildah push REF oci-archive:FILE:REF``.

* **cache** — :func:`cached` stores ``<cache>/images/<name>-<key>.tar``, where ``key`` hashes
  every input (:func:`input_key`; for a Dockerfile: its text, the files its ``COPY``/``ADD``
  lines read minus ``.dockerignore`` matches, the build args and the base images' digests). A
  cached archive is never rebuilt; a half-written one is never visible (temp file + rename) and a
  file lock keeps two builders of one key from racing.

* **import** — :func:`import_images` runs ``ctr images import`` through a caller-given argv
  prefix (the node enters its namespaces and points ``ctr`` at its private socket), skipping
  every image whose reference containerd already holds at the archive's manifest digest.
  containerd's data directory persists between runs, so a warm start imports nothing.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from localcluster import versions
from localcluster.build import log, run_with_heartbeat


class ImageError(RuntimeError):
    """An image could not be built, exported or imported; the message carries the command output."""


@dataclass(frozen=True)
class Image:
    """A built image: the reference pods use (``imagePullPolicy: Never``) and its cached archive."""

    ref: str
    archive: Path

    @property
    def digest(self) -> str:
        """The manifest digest recorded in the archive's ``index.json`` (what containerd stores)."""
        return archive_digest(self.archive)

    def build_arg(self) -> str:
        """How a Dockerfile's ``ARG BASE`` / ``FROM ${BASE}`` names this image for buildah."""
        return f"oci-archive:{self.archive}"


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (what ``buildah config`` would set)."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""


def cache_dir() -> Path:
    return versions.cache_root() / "images"


def _run(argv: Sequence[str], what: str, timeout: float = 3600.0) -> str:
    returncode, stdout, stderr = run_with_heartbeat(argv, what, timeout=timeout)
    if returncode != 0:
        tail = "\n".join((stdout + stderr).splitlines()[-30:])
        raise ImageError(f"{what} failed (exit {returncode}): {shlex.join(argv)}\n{tail}")
    return stdout


# ---------------------------------------------------------------------------------------------
# keys (pure)


def tree_digest(path: Path, ignore: Callable[[str], bool] = lambda rel: False) -> str:
    """sha256 over a file or directory tree: relative paths, exec bits, link targets, contents."""
    h = hashlib.sha256()
    entries = [path] if not path.is_dir() else sorted(path.rglob("*"))
    for entry in entries:
        rel = "." if entry == path else entry.relative_to(path).as_posix()
        if ignore(rel):
            continue
        if entry.is_symlink():
            h.update(f"L {rel} {os.readlink(entry)}\n".encode())
        elif entry.is_file():
            h.update(f"F {rel} {os.stat(entry).st_mode & 0o111:o}\n".encode())
            h.update(hashlib.sha256(entry.read_bytes()).digest())
        elif entry.is_dir():
            h.update(f"D {rel}\n".encode())
    return h.hexdigest()


def input_key(*parts: str | bytes | Path) -> str:
    """16 hex digits over ``parts`` (paths by :func:`tree_digest`), order-sensitive."""
    h = hashlib.sha256()
    for part in parts:
        data = tree_digest(part).encode() if isinstance(part, Path) else part
        h.update(data if isinstance(data, bytes) else data.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def dockerfile_sources(text: str) -> list[str]:
    """Context paths read by ``COPY``/``ADD`` lines (not ``--from`` stages), in order."""
    joined = re.sub(r"\\\r?\n", " ", text)
    sources: list[str] = []
    for line in joined.splitlines():
        m = re.match(r"^\s*(COPY|ADD)\s+(.*)$", line, re.IGNORECASE)
        if not m:
            continue
        rest = m.group(2).strip()
        args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        if any(a.startswith("--from") for a in args):
            continue
        paths = [a for a in args if not a.startswith("--")]
        sources += paths[:-1]
    return sources


def dockerignore_matcher(text: str) -> Callable[[str], bool]:
    """Whether a context-relative path is excluded by ``.dockerignore`` lines (``**/``, ``*``, ``!``)."""
    rules: list[tuple[bool, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").strip("/")))

    def matches(pattern: str, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            return any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pattern[3:]) for p in prefixes)
        return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)

    def excluded(rel: str) -> bool:
        result = False
        for negate, pattern in rules:
            if matches(pattern, rel):
                result = not negate
        return result

    return excluded


def _under(top: str, ignored: Callable[[str], bool]) -> Callable[[str], bool]:
    """``ignored`` for paths relative to ``top`` (``"."`` is ``top`` itself)."""
    return lambda rel: ignored(top if rel == "." else f"{top}/{rel}")


def context_key(dockerfile: Path, context: Path) -> str:
    """sha256 over the Dockerfile and every context file its COPY/ADD lines read."""
    ignore_file = context / ".dockerignore"
    ignored = dockerignore_matcher(ignore_file.read_text() if ignore_file.is_file() else "")
    h = hashlib.sha256(dockerfile.read_bytes())
    for source in dockerfile_sources(dockerfile.read_text()):
        for path in sorted(context.glob(source)) if any(c in source for c in "*?[") else [context / source]:
            rel = path.relative_to(context).as_posix()
            h.update(f"{rel}\n".encode())
            h.update(tree_digest(path, _under(rel, ignored)).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the cache


@contextmanager
def _key_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def archive_path(ref: str, key: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref.split("/")[-1].split(":")[0])
    return cache_dir() / f"{name}-{key}.tar"


def cached(ref: str, key: str, produce: Callable[[Path], None]) -> Image:
    """The image ``ref`` from ``<cache>/images/<name>-<key>.tar``; ``produce(tmp)`` writes it once."""
    path = archive_path(ref, key)
    if not path.is_file():
        with _key_lock(path):
            if not path.is_file():
                log(f"building image {ref} ...")
                tmp = path.with_name(f".{path.name}.{os.getpid()}")
                tmp.unlink(missing_ok=True)
                try:
                    produce(tmp)
                    tmp.rename(path)
                finally:
                    tmp.unlink(missing_ok=True)
    return Image(ref, path)


def archive_digest(archive: Path) -> str:
    """The first manifest digest in an OCI archive's ``index.json``."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImageError(f"{archive} has no index.json")
        return str(json.load(member)["manifests"][0]["digest"])


# ---------------------------------------------------------------------------------------------
# FROM scratch, in Python


def _blob(tar: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return digest, len(data)


def _layer(rootfs: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for path in sorted(rootfs.rglob("*")):
            info = layer.gettarinfo(str(path), path.relative_to(rootfs).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with path.open("rb") as fh:
                    layer.addfile(info, fh)
            else:
                layer.addfile(info)
    return buf.getvalue()


#: Version of what :func:`write_oci_archive` writes; part of every scratch image's key.
ARCHIVE_FORMAT = "2"  # 2: a history entry for the layer (buildah builds on it)


def write_oci_archive(rootfs: Path, archive: Path, ref: str, config: ImageConfig) -> None:
    """A one-layer OCI image archive of ``rootfs`` (uncompressed layer), reproducible byte for byte."""
    layer = _layer(rootfs)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    runtime: dict[str, object] = {"Env": [f"{k}={v}" for k, v in config.env.items()] or
                                  ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    if config.entrypoint:
        runtime["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        runtime["Cmd"] = list(config.cmd)
    if config.workdir:
        runtime["WorkingDir"] = config.workdir
    if config.user:
        runtime["User"] = config.user
    # One history entry per layer: buildah refuses to build on an image whose history
    # lists fewer non-empty layers than it has ("history lists 0 non-empty layers").
    image_config = {"architecture": "amd64", "os": "linux", "config": runtime,
                    "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
                    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"localcluster.images: {ref}"}]}
    with tarfile.open(archive, "w") as tar:
        layer_desc = _blob(tar, layer)
        config_desc = _blob(tar, json.dumps(image_config, sort_keys=True).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": config_desc[0], "size": config_desc[1]},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                "digest": layer_desc[0], "size": layer_desc[1]}]}
        manifest_desc = _blob(tar, json.dumps(manifest, sort_keys=True).encode())
        index = {"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_desc[0],
             "size": manifest_desc[1], "annotations": {"org.opencontainers.image.ref.name": ref}}]}
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index, sort_keys=True).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def from_rootfs(ref: str, key: str, populate: Callable[[Path], None],
                config: ImageConfig = ImageConfig()) -> Image:
    """A scratch image of the tree ``populate(dir)`` creates; ``key`` must cover its inputs."""
    def produce(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=cache_dir()) as rootfs:
            populate(Path(rootfs))
            write_oci_archive(Path(rootfs), tmp, ref, config)

    return cached(ref, input_key(key, repr(config), ARCHIVE_FORMAT), produce)


# ---------------------------------------------------------------------------------------------
# Dockerfiles, with buildah


def buildah_argv(*args: str) -> list[str]:
    """``buildah`` with the project's private storage, in a throw-away private mount namespace."""
    root = versions.cache_root() / "buildah"
    return ["unshare", "--mount", "--propagation", "private", "buildah",
            "--root", str(root / "storage"), "--runroot", str(root / "run"), *args]


def dockerfile_key(dockerfile: Path, context: Path, *, build_args: Mapping[str, str] = {},
                   bases: Mapping[str, Image] = {}) -> str:
    """The cache key of a :func:`from_dockerfile` build (callers may tag the image with it)."""
    return input_key(context_key(dockerfile, context), json.dumps(build_args, sort_keys=True),
                     *(f"{n}={image.digest}" for n, image in sorted(bases.items())))


def from_dockerfile(ref: str, dockerfile: Path, context: Path, *,
                    build_args: Mapping[str, str] = {}, bases: Mapping[str, Image] = {},
                    volumes: Sequence[str] = (), layers: bool = False, timeout: float = 3600.0) -> Image:
    """``buildah bud`` of ``dockerfile``; ``bases`` maps build-arg names to base images.

    ``volumes`` are ``-v`` values (``SRC:DST[:OPTS]``) visible to ``RUN`` steps only; they are
    build helpers (a CA bundle), not inputs, and do not enter the key. ``layers`` keeps buildah's
    layer cache in the private storage, so a rebuild after a code change reuses the steps
    before the first changed one (a Dockerfile that installs its dependencies first then skips
    gigabytes of wheels).
    """
    if shutil.which("buildah") is None:
        raise ImageError("`buildah` is not installed (make tools installs it)")
    all_args = {**build_args, **{name: stored_or_archive(image) for name, image in bases.items()}}
    key = dockerfile_key(dockerfile, context, build_args=build_args, bases=bases)

    def produce(tmp: Path) -> None:
        argv = ["bud", "--network", "host", "--pull=never", "--isolation", "chroot", f"--layers={str(layers).lower()}",
                "-f", str(dockerfile), "-t", ref]
        for name, value in sorted(all_args.items()):
            argv += ["--build-arg", f"{name}={value}"]
        for volume in volumes:
            argv += ["-v", volume]
        _run(buildah_argv(*argv, str(context)), f"buildah bud {ref}", timeout)
        try:
            _run(buildah_argv("push", ref, f"oci-archive:{tmp}:{ref}"), f"buildah push {ref}", timeout)
        finally:
            if not layers:  # removing the image would take its cached layers with it
                remove_from_storage(ref)

    return cached(ref, key, produce)


def stored_or_archive(image: Image) -> str:
    """How a build names a base: the image in buildah's storage when a layered build left it
    there (no need to unpack its archive again, minutes for torch), else its archive."""
    found = subprocess.run(buildah_argv("inspect", "--type", "image", image.ref),
                           capture_output=True, text=True)  # fmt: skip
    return image.ref if found.returncode == 0 else image.build_arg()


def remove_from_storage(ref: str) -> None:
    """Drop ``ref`` (and layers no other image uses) from the private buildah storage, if there."""
    subprocess.run(buildah_argv("rmi", ref), capture_output=True)


# ---------------------------------------------------------------------------------------------
# into the node's containerd


def containerd_digests(ctr: Sequence[str]) -> dict[str, str]:
    """Reference -> target digest of every image ``ctr`` lists."""
    out = _run([*ctr, "images", "list"], "ctr images list", 120)
    digests: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3:
            digests[cols[0]] = cols[2]
    return digests


def import_images(images: Sequence[Image], ctr: Sequence[str]) -> list[str]:
    """Import every image containerd lacks (by reference and digest); return the refs imported.

    ``ctr`` is the full argv prefix up to the subcommand, e.g.
    ``[nsenter, --net=..., --mount=..., ctr, --address, SOCK, -n, k8s.io]``.
    """
    have = containerd_digests(ctr)
    imported = []
    for image in images:
        if have.get(image.ref) == image.digest:
            continue
        _run([*ctr, "images", "import", str(image.archive)], f"import {image.ref}", 1800)
        imported.append(image.ref)
    return imported
