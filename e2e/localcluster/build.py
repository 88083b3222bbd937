"""Build the pinned cluster binaries from the Go module proxy, once, into the cache.

Why build instead of download: no image can be pulled on the machines the project runs on,
and distro packages are too old (Debian's etcd is 3.4, ``/usr/bin/kubectl`` is 1.32). The Go
module proxy is reachable, and every component is a Go program, so ``go build`` at a pinned
version gives byte-for-byte what upstream ships, minus the release tooling.

Groups, each one ``go`` invocation so compile work is shared inside the group:

* **kubernetes** (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl): the
  ``k8s.io/kubernetes`` module cannot be ``go install``-ed directly because its go.mod
  replaces the 30-odd ``k8s.io/*`` staging modules with ``./staging/...`` directories, and
  replace directives of a dependency are ignored. So a throw-away wrapper module requires
  ``k8s.io/kubernetes`` and re-states every one of those replaces against the published
  staging module (``k8s.io/X v0.<minor>.<patch>``). The list is *read* from upstream's go.mod
  (``go mod download -json`` gives its path), never hard-coded, and the ``go``/``godebug``
  lines are copied so the runtime behaves as upstream's release does. Version variables are
  stamped with ``-ldflags -X`` exactly as ``hack/lib/version.sh`` does.
* **etcd**: same trick; the main package is ``go.etcd.io/etcd/server/v3`` and the root
  module's ``./api``, ``./server``, ... replaces are mapped to the published submodules.
* **kwok**: a plain ``go install`` works (no replaces).
* **node** (kubelet, kube-proxy): the kubernetes recipe at the node's own version, one minor
  below the control plane (kubelet 1.36 dropped containerd 1.x, which Debian ships).
* **coredns**: a plain ``go install`` (the real node's cluster DNS).
* **storage**: a plain ``go install`` of local-path-provisioner (dynamic volumes on the real node).
* **netpol**: a plain ``go install`` of kube-router (its go.mod has no replace directives), the
  real node's NetworkPolicy enforcer in the test harness only. Cold (empty module and build
  caches): 4.4 minutes on 2 cores shared with the kubernetes compile, 2.8 CPU-minutes; 59 MB.

Atomic install: each group builds into a temporary directory under the cache, then every
binary is moved into its own ``<name>-<version>/`` directory with a single ``rename``. A
half-finished build therefore never looks cached. A file lock serialises concurrent builders
(the Makefile and a pytest session may both ask), and a group whose binaries all exist is
never rebuilt.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from localcluster import versions
from localcluster.versions import Binary


class BuildError(RuntimeError):
    """A ``go`` command failed; the message carries the command and its output tail."""


def log(msg: str) -> None:
    """Progress line on stderr (stdout stays clean for ``kubeconfig``/``kubectl-path``)."""
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``go``: local toolchain only, static binaries, no workspace."""
    env = dict(os.environ)
    env.update({"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOWORK": "off", "GOFLAGS": "-buildvcs=false"})
    env.update(extra or {})
    return env


def run_go(args: Sequence[str], cwd: Path, what: str, extra_env: dict[str, str] | None = None,
           heartbeat_s: float = 30.0) -> str:
    """Run ``go ARGS`` in ``cwd``; print a heartbeat so a long compile visibly lives.

    Returns stdout. Output is collected in a temp file (not a pipe) so a chatty command can
    never block on a full pipe while we wait on it.
    """
    go = shutil.which("go")
    if go is None:
        raise BuildError("`go` is not on PATH; the local cluster is built from Go modules")
    returncode, stdout, stderr = run_with_heartbeat([go, *args], what, cwd=cwd, env=go_env(extra_env),
                                                    heartbeat_s=heartbeat_s)  # fmt: skip
    if returncode != 0:
        tail = "\n".join((stdout + stderr).splitlines()[-40:])
        raise BuildError(f"`go {' '.join(args)}` failed in {cwd} (exit {returncode}):\n{tail}")
    return stdout


def run_with_heartbeat(argv: Sequence[str], what: str, *, cwd: Path | None = None,
                       env: dict[str, str] | None = None, heartbeat_s: float = 30.0,
                       timeout: float | None = None) -> tuple[int, str, str]:
    """Run ``argv``, logging a line every ``heartbeat_s`` so a long step visibly lives.

    Returns (exit status, stdout, stderr). Output is collected in temp files (not pipes) so a
    chatty command can never block on a full pipe while we wait on it. Past ``timeout`` the
    command is killed and ``subprocess.TimeoutExpired`` raised.
    """
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        while True:
            try:
                proc.wait(timeout=heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - start
                if timeout is not None and elapsed > timeout:
                    proc.kill()
                    proc.wait()
                    raise subprocess.TimeoutExpired(list(argv), timeout) from None
                log(f"  ... {what}: still running ({elapsed:.0f} s)")
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read()


def module_info(module: str, version: str, cwd: Path) -> dict[str, object]:
    """``go mod download -json module@version``: paths of its go.mod (GoMod) and source (Dir)."""
    out = run_go(["mod", "download", "-json", f"{module}@{version}"], cwd, f"download {module}@{version}")
    info = json.loads(out)
    if not isinstance(info, dict) or "GoMod" not in info:
        raise BuildError(f"unexpected `go mod download -json` output for {module}@{version}: {out[:500]}")
    return info


# ---------------------------------------------------------------------------------------------
# go.mod parsing (pure; unit-tested)

_REPLACE_LINE = re.compile(r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\S+)(?:\s+(\S+))?\s*$")


def _directive_lines(gomod: str, directive: str) -> list[str]:
    """Bodies of every ``directive X`` line and every line inside ``directive ( ... )`` blocks."""
    lines: list[str] = []
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if in_block:
            if line == ")":
                in_block = False
            else:
                lines.append(line)
        elif line == f"{directive} (" or line == f"{directive}(":
            in_block = True
        elif line.startswith(directive + " ") or line.startswith(directive + "\t"):
            lines.append(line[len(directive):].strip())
    return lines


def local_replaces(gomod: str) -> list[tuple[str, str]]:
    """``(module, local_dir)`` for each replace pointing at a directory (``./...``) in ``gomod``."""
    result: list[tuple[str, str]] = []
    for body in _directive_lines(gomod, "replace"):
        m = _REPLACE_LINE.match(body)
        if m and m.group(2).startswith("./") and m.group(3) is None:
            result.append((m.group(1), m.group(2)))
    return result


def go_and_godebug_lines(gomod: str) -> list[str]:
    """The ``go`` line and any ``godebug`` directives of ``gomod``, ready to paste into a go.mod."""
    out: list[str] = []
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].rstrip()
        if re.match(r"^go\s+\d", line):
            out.append(line.strip())
    for body in _directive_lines(gomod, "godebug"):
        out.append(f"godebug {body}")
    return out


def wrapper_gomod(module: str, header: Sequence[str], requires: dict[str, str],
                  replaces: dict[str, str]) -> str:
    """Text of a wrapper go.mod: ``requires``/``replaces`` map module path -> version."""
    parts = [f"module {module}", "", *header, ""]
    parts += [f"require {m} {v}" for m, v in sorted(requires.items())]
    parts.append("")
    parts += [f"replace {m} => {m} {v}" for m, v in sorted(replaces.items())]
    return "\n".join(parts) + "\n"


def kubernetes_ldflags(version: str, commit: str = "") -> str:
    """``-ldflags`` stamping the version the way kubernetes' hack/lib/version.sh does."""
    m = re.match(r"^v(\d+)\.(\d+)\.", version)
    if not m:
        raise ValueError(f"not a kubernetes version: {version}")
    flags = ["-s", "-w"]
    values = {"gitVersion": version, "gitMajor": m.group(1), "gitMinor": m.group(2),
              "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z"}
    if commit:
        values["gitCommit"] = commit
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{k}={v}" for k, v in values.items()]
    return " ".join(flags)


# ---------------------------------------------------------------------------------------------
# building and installing


def missing(group: str) -> list[Binary]:
    """Binaries of ``group`` not yet in the cache."""
    return [b for b in (*versions.BINARIES, *versions.NODE_BINARIES)
            if b.group == group and not versions.binary_path(b).is_file()]


def _install(built_dir: Path, binaries: Sequence[Binary]) -> None:
    """Move each freshly built binary into ``<name>-<version>/`` with one atomic rename."""
    for b in binaries:
        src = built_dir / b.name
        if not src.is_file():
            raise BuildError(f"build finished but {src} does not exist")
        final = versions.binary_dir(b)
        stage = Path(tempfile.mkdtemp(prefix=f".{b.name}-", dir=final.parent))
        shutil.move(str(src), stage / b.name)
        (stage / b.name).chmod(0o755)
        stage.chmod(0o755)  # mkdtemp makes 0700 directories
        try:
            stage.rename(final)
        except OSError:
            shutil.rmtree(stage, ignore_errors=True)  # someone else installed it meanwhile
            if not versions.binary_path(b).is_file():
                raise
        log(f"  installed {versions.binary_path(b)}")


def _build_kubernetes_commands(work: Path, out: Path, version: str, staging_version: str,
                               commands: dict[str, str], what: str) -> None:
    """Build ``commands`` of ``k8s.io/kubernetes@version`` into ``out`` with one shared ``go build``."""
    v, sv = version, staging_version
    info = module_info("k8s.io/kubernetes", v, work)
    upstream = Path(str(info["GoMod"])).read_text()
    staging = [m for m, d in local_replaces(upstream) if d.startswith("./staging/")]
    if not staging:
        raise BuildError("found no ./staging replaces in k8s.io/kubernetes go.mod; its layout changed")
    log(f"  k8s.io/kubernetes {v}: {len(staging)} staging modules -> {sv}")
    (work / "go.mod").write_text(wrapper_gomod(f"lepton.local/build/{what}", go_and_godebug_lines(upstream),
                                               {"k8s.io/kubernetes": v}, {m: sv for m in staging}))
    pkgs = list(commands.values())
    run_go(["get", *(f"{p}@{v}" for p in pkgs)], work, f"resolve {what} modules")
    origin = info.get("Origin")
    commit = str(origin.get("Hash", "")) if isinstance(origin, dict) else ""
    run_go(["build", "-trimpath", "-ldflags", kubernetes_ldflags(v, commit), "-o", f"{out}/", *pkgs],
           work, f"compile {what}")


def build_kubernetes(work: Path, out: Path) -> None:
    """The control plane's four commands (kube-apiserver, controller-manager, scheduler, kubectl)."""
    _build_kubernetes_commands(work, out, versions.KUBERNETES_VERSION, versions.KUBERNETES_STAGING_VERSION,
                               versions.KUBERNETES_COMMANDS, "kubernetes")


def build_node(work: Path, out: Path) -> None:
    """The real node's kubelet and kube-proxy, at the node's own (older, within skew) version."""
    _build_kubernetes_commands(work, out, versions.NODE_KUBERNETES_VERSION,
                               versions.NODE_KUBERNETES_STAGING_VERSION, versions.NODE_COMMANDS, "node")


def build_etcd(work: Path, out: Path) -> None:
    """Build etcd (main package go.etcd.io/etcd/server/v3) into ``out/etcd``."""
    v = versions.ETCD_VERSION
    info = module_info("go.etcd.io/etcd/v3", v, work)
    upstream = Path(str(info["GoMod"])).read_text()
    subs = [m for m, _ in local_replaces(upstream)]
    log(f"  go.etcd.io/etcd {v}: {len(subs)} submodules pinned to {v}")
    (work / "go.mod").write_text(wrapper_gomod("lepton.local/build/etcd", go_and_godebug_lines(upstream),
                                               {versions.ETCD_MAIN_PACKAGE: v}, {m: v for m in subs}))
    run_go(["get", f"{versions.ETCD_MAIN_PACKAGE}@{v}"], work, "resolve etcd modules")
    ldflags = "-s -w"
    origin = info.get("Origin")
    if isinstance(origin, dict) and origin.get("Hash"):
        ldflags += f" -X go.etcd.io/etcd/api/v3/version.GitSHA={str(origin['Hash'])[:10]}"
    run_go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(out / "etcd"), versions.ETCD_MAIN_PACKAGE],
           work, "compile etcd")


def build_kwok(work: Path, out: Path) -> None:
    """``go install`` kwok and kwokctl into ``out``."""
    v = versions.KWOK_VERSION
    run_go(["install", "-trimpath", "-ldflags", "-s -w", *(f"{p}@{v}" for p in versions.KWOK_COMMANDS.values())],
           work, "compile kwok", {"GOBIN": str(out)})


def build_coredns(work: Path, out: Path) -> None:
    """``go install`` CoreDNS (no replace directives), the real node's cluster DNS."""
    run_go(["install", "-trimpath", "-ldflags", "-s -w", f"{versions.COREDNS_MAIN_PACKAGE}@{versions.COREDNS_VERSION}"],
           work, "compile coredns", {"GOBIN": str(out)})


def build_storage(work: Path, out: Path) -> None:
    """``go install`` local-path-provisioner (no replace directives): the real node's default StorageClass."""
    run_go(["install", "-trimpath", "-ldflags", "-s -w", f"{versions.LOCAL_PATH_MAIN_PACKAGE}@{versions.LOCAL_PATH_VERSION}"],
           work, "compile local-path-provisioner", {"GOBIN": str(out)})


def build_netpol(work: Path, out: Path) -> None:
    """``go install`` kube-router (no replace directives), stamped with its version as its Makefile does."""
    ldflags = f"-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={versions.KUBE_ROUTER_VERSION}"
    run_go(["install", "-trimpath", "-ldflags", ldflags, f"{versions.KUBE_ROUTER_MAIN_PACKAGE}@{versions.KUBE_ROUTER_VERSION}"],
           work, "compile kube-router", {"GOBIN": str(out)})


def build_kind(work: Path, out: Path) -> None:
    """``go install sigs.k8s.io/kind`` (only for ``LEPTON_E2E_CLUSTER=kind`` without kind on PATH)."""
    run_go(["install", "-trimpath", "-ldflags", "-s -w", f"sigs.k8s.io/kind@{versions.KIND_VERSION}"],
           work, "compile kind", {"GOBIN": str(out)})


def build_versitygw(work: Path, out: Path) -> None:
    """``go install`` versitygw, the S3 server the preparer's s3:// tests run against."""
    run_go(["install", "-trimpath", "-ldflags", "-s -w", f"{versions.VERSITYGW_MAIN_PACKAGE}@{versions.VERSITYGW_VERSION}"],
           work, "compile versitygw", {"GOBIN": str(out)})


_BUILDERS = {"kubernetes": build_kubernetes, "etcd": build_etcd, "kwok": build_kwok, "node": build_node,
             "coredns": build_coredns, "storage": build_storage, "netpol": build_netpol}
#: Single-binary tools built on demand, outside the cluster's groups.
_TOOLS = {"kind": (versions.KIND_BINARY, build_kind), "versitygw": (versions.VERSITYGW_BINARY, build_versitygw)}


@contextmanager
def _build_lock() -> Iterator[None]:
    lock_path = versions.cache_root() / "build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build holds {lock_path}; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers() -> None:
    """Delete temp dirs of builds that were killed (only called while holding the build lock)."""
    bin_root = versions.cache_root() / "bin"
    for leftover in bin_root.glob(".*") if bin_root.is_dir() else []:
        if leftover.is_dir():
            log(f"removing leftover of an interrupted build: {leftover}")
            shutil.rmtree(leftover, ignore_errors=True)


def _build_group(group: str, todo: Sequence[Binary]) -> float:
    start = time.monotonic()
    log(f"building {group} ({', '.join(b.name for b in todo)}) ...")
    bin_root = versions.cache_root() / "bin"
    bin_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".build-{group}-", dir=bin_root) as tmp:
        work, out = Path(tmp) / "mod", Path(tmp) / "out"
        work.mkdir()
        out.mkdir()
        if group in _TOOLS:
            _TOOLS[group][1](work, out)
        else:
            _BUILDERS[group](work, out)
        _install(out, todo)
    elapsed = time.monotonic() - start
    log(f"built {group} in {elapsed:.0f} s")
    return elapsed


#: Everything the local cluster runs: the control plane, kwok, and the real node's binaries.
LOCAL_GROUPS = ("kubernetes", "etcd", "kwok", "node", "coredns", "storage", "netpol")


def ensure_built(groups: Sequence[str] = ("kubernetes", "etcd", "kwok")) -> dict[str, float]:
    """Build every missing binary of ``groups``; return seconds spent per group built.

    Cached binaries are never rebuilt; an all-cached call returns ``{}`` in milliseconds.
    """
    def todo_of(group: str) -> list[Binary]:
        if group in _TOOLS:
            tool = _TOOLS[group][0]
            return [] if versions.binary_path(tool).is_file() else [tool]
        return missing(group)

    if not any(todo_of(g) for g in groups):
        return {}
    times: dict[str, float] = {}
    with _build_lock():
        _remove_leftovers()
        for group in groups:
            todo = todo_of(group)  # re-check: a concurrent builder may have finished it
            if todo:
                times[group] = _build_group(group, todo)
    return times


def ensure_versitygw() -> Path:
    """The versitygw executable, built into the cache at the pinned version when missing."""
    ensure_built(("versitygw",))
    return versions.binary_path(versions.VERSITYGW_BINARY)


def ensure_kind() -> Path:
    """A ``kind`` executable: from PATH, else built into the cache at the pinned version."""
    found = shutil.which("kind")
    if found:
        return Path(found)
    ensure_built(("kind",))
    return versions.binary_path(versions.KIND_BINARY)
