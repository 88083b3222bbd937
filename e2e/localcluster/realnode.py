"""The local cluster's one real node: containerd, kubelet and kube-proxy in the cluster's namespaces.

kwok nodes run nothing; this node runs real containers, so the shipped images, CoreDNS, Services
and volumes are exercised for real. Started by :mod:`localcluster.local` after kwokctl's
control plane (which already runs inside the namespace of :mod:`localcluster.netns`):

1. :func:`host_problems` says why the machine cannot host the node (not root, no namespaces,
   Debian packages missing: ``make tools`` installs them), so ``up()`` can refuse with the reason.
2. :func:`node_images` builds (once, cached by input hash, see :mod:`localcluster.images`) the
   infrastructure images: the pause program (``pause.c``, static), busybox (Debian's
   ``busybox-static`` plus its applet links) and CoreDNS (built by ``build.py``).
3. :func:`start`: client certificates for the kubelet (``system:node:<name>``) and kube-proxy
   (``system:kube-proxy``) signed by kwokctl's CA; containerd in the node's network + mount
   namespaces with its data directory in the cache (kept between runs, so a warm start imports
   nothing); the images imported; then kubelet (same namespaces) and kube-proxy (network
   namespace). Each process is detached with its pid in ``<state>/node/pids`` and its log in
   ``<state>/node/logs``. Once the node has registered, :mod:`localcluster.kuberouter` starts the
   NetworkPolicy enforcer the same way (:data:`KUBE_ROUTER`, one of :data:`PROCESSES`).
4. :func:`install_dns` applies CoreDNS (``nodeconfig.coredns_manifests``) and waits until it serves.

:func:`stop` removes the node's containers from containerd (so its kept data directory carries
no stale pods), stops the processes and the namespace sweep of ``netns.destroy`` does the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from localcluster import images, netns, nodeconfig, versions
from localcluster.build import log
from localcluster.kube import Kubectl, condition_true, wait_until
from localcluster.lepton import stop_pid
from localcluster.sharing import pid_alive

PAUSE_SOURCE = Path(__file__).with_name("pause.c")
FORWARDER = Path(__file__).with_name("forward.py")
#: Inside the node's mount namespace, on its private tmpfs ``/run``.
NODE_RUN = Path("/run/lepton-node")
SOCKET = NODE_RUN / "containerd.sock"
#: Debian packages and a file each provides; ``make tools`` installs them.
PACKAGES: dict[str, str] = {
    "containerd": "/usr/bin/containerd", "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge", "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack", "busybox-static": "/bin/busybox", "gcc": "/usr/bin/gcc",
    "buildah": "/usr/bin/buildah", "skopeo": "/usr/bin/skopeo", "umoci": "/usr/bin/umoci",
    "debootstrap": "/usr/sbin/debootstrap", "ipset": "/usr/sbin/ipset",
}
#: The NetworkPolicy enforcer, started by :mod:`localcluster.kuberouter` once the node exists.
KUBE_ROUTER = "kube-router"
PROCESSES = ("forwarder", "containerd", "kubelet", "kube-proxy", KUBE_ROUTER)
PAUSE_REF = "localhost/lepton/pause:1"
BUSYBOX_REF = "localhost/lepton/busybox:1"
COREDNS_REF = f"localhost/lepton/coredns:{versions.COREDNS_VERSION}"
LOCAL_PATH_REF = f"localhost/lepton/local-path-provisioner:{versions.LOCAL_PATH_VERSION}"


class NodeError(RuntimeError):
    """The real node could not start; the message carries the component's log tail."""


@dataclass(frozen=True)
class NodeImages:
    pause: images.Image
    busybox: images.Image
    coredns: images.Image
    local_path: images.Image

    def all(self) -> list[images.Image]:
        return [self.pause, self.busybox, self.coredns, self.local_path]


def base_dir(inst: netns.Instance) -> Path:
    return inst.state


def logs_dir(inst: netns.Instance) -> Path:
    return inst.state / "logs"


def containerd_root(inst: netns.Instance) -> Path:
    """containerd's data directory: in the cache, per instance, kept between runs."""
    return versions.cache_root() / "containerd" / inst.id


#: In each containerd data directory: the state directory of the checkout it belongs to.
CONTAINERD_OWNER = "lepton-owner"


def claim_containerd_root(inst: netns.Instance) -> Path:
    """Create the instance's containerd data directory and record whose it is (for :func:`orphaned_containerd_roots`)."""
    root = containerd_root(inst)
    root.mkdir(parents=True, exist_ok=True)
    (root / CONTAINERD_OWNER).write_text(str(inst.state.resolve()))
    return root


def orphaned_containerd_roots(cache: Path, run_root: Path) -> list[Path]:
    """containerd data directories whose checkout is gone (its state directory no longer exists)
    and whose instance does not run (no ``run_root/<id>``).

    Each checkout's node keeps its images there (about 9 GB with the workloads and simulator
    images), and nothing else would ever remove them: a CI run's fresh clone, or a deleted
    worktree, left one behind every time until the disk filled. A directory without an owner
    record (made before it existed) is never touched.
    """
    orphans = []
    for root in sorted(cache.glob("*")):
        owner = root / CONTAINERD_OWNER
        if owner.is_file() and not Path(owner.read_text()).exists() and not (run_root / root.name).exists():
            orphans.append(root)
    return orphans


def sweep_orphaned_containerd_roots() -> None:
    """Remove :func:`orphaned_containerd_roots`, naming each."""
    for root in orphaned_containerd_roots(versions.cache_root() / "containerd", netns.RUN_ROOT):
        log(f"removing the node images of a checkout that is gone: {root}")
        shutil.rmtree(root, ignore_errors=True)


def missing_packages() -> list[str]:
    return [pkg for pkg, path in PACKAGES.items() if not Path(path).exists()]


def host_problems() -> list[str]:
    """Why the real node cannot run here ([] when it can)."""
    problems = netns.host_problems()
    missing = missing_packages()
    if missing:
        problems.append(f"missing Debian packages: {' '.join(missing)} (`make tools` installs them)")
    elif b"ld-linux" in Path("/bin/busybox").read_bytes()[:4096]:
        problems.append("/bin/busybox is dynamically linked; install busybox-static")
    return problems


# ---------------------------------------------------------------------------------------------
# images


def _gcc_version() -> str:
    return subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]


def node_images() -> NodeImages:
    """The pause, busybox and CoreDNS images (built once per input hash)."""
    def pause(root: Path) -> None:
        subprocess.run(["gcc", "-static", "-Os", "-o", str(root / "pause"), str(PAUSE_SOURCE)], check=True)

    def busybox(root: Path) -> None:
        (root / "bin").mkdir()
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        listing = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True, check=True)
        for applet in listing.stdout.split():
            link = root / applet
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        for d in ("tmp", "etc", "root"):
            (root / d).mkdir(exist_ok=True)
        (root / "tmp").chmod(0o1777)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")

    coredns_bin = versions.path_of("coredns")

    def coredns(root: Path) -> None:
        shutil.copy2(coredns_bin, root / "coredns")

    local_path_bin = versions.path_of("local-path-provisioner")

    def local_path(root: Path) -> None:
        shutil.copy2(local_path_bin, root / "local-path-provisioner")

    return NodeImages(
        pause=images.from_rootfs(PAUSE_REF, images.input_key(PAUSE_SOURCE, _gcc_version()),
                                 pause, images.ImageConfig(entrypoint=["/pause"])),
        busybox=images.from_rootfs(BUSYBOX_REF, images.input_key(Path("/bin/busybox")), busybox,
                                   images.ImageConfig(cmd=["sh"])),
        coredns=images.from_rootfs(COREDNS_REF,
                                   images.input_key(coredns_bin), coredns,
                                   images.ImageConfig(entrypoint=["/coredns"])),
        local_path=images.from_rootfs(LOCAL_PATH_REF, images.input_key(local_path_bin), local_path,
                                      images.ImageConfig(entrypoint=["/local-path-provisioner"])),
    )


# ---------------------------------------------------------------------------------------------
# processes


def pid_file(inst: netns.Instance, name: str) -> Path:
    return inst.state / "pids" / f"{name}.pid"


def spawn(inst: netns.Instance, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached (own session), log to ``logs/<name>.log``, record its pid."""
    logs_dir(inst).mkdir(parents=True, exist_ok=True)
    pid_file(inst, name).parent.mkdir(parents=True, exist_ok=True)
    with (logs_dir(inst) / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    pid_file(inst, name).write_text(str(proc.pid))
    return proc


def stop_process(inst: netns.Instance, name: str) -> None:
    """Stop a process :func:`spawn` started under ``name`` (gone already is fine)."""
    try:
        stop_pid(int(pid_file(inst, name).read_text()))
    except (OSError, ValueError):
        return
    pid_file(inst, name).unlink(missing_ok=True)


def pids(inst: netns.Instance) -> dict[str, int]:
    found = {}
    for name in PROCESSES:
        try:
            found[name] = int(pid_file(inst, name).read_text())
        except (OSError, ValueError):
            pass
    return found


def dead_processes(inst: netns.Instance) -> list[str]:
    """Node processes that were started and are gone ([] also when none was started)."""
    return [name for name, pid in pids(inst).items() if not pid_alive(pid)]


def running(inst: netns.Instance) -> bool:
    return set(pids(inst)) == set(PROCESSES) and not dead_processes(inst)


def log_tail(inst: netns.Instance, lines: int = 15, width: int = 300) -> str:
    parts = []
    dead = set(dead_processes(inst))
    for name in sorted(PROCESSES, key=lambda n: n not in dead):
        path = logs_dir(inst) / f"{name}.log"
        if path.is_file():
            text = [line[:width] for line in path.read_text(errors="replace").splitlines()[-lines:]]
            parts.append(f"--- {path}{' DEAD' if name in dead else ''}\n" + "\n".join(text))
    return "\n".join(parts)


def await_ready(proc: subprocess.Popen[bytes], inst: netns.Instance, name: str, ready: object, what: str,
           timeout: float = 60.0) -> None:
    def check() -> bool:
        if proc.poll() is not None:
            raise NodeError(f"{name} exited with {proc.returncode}\n{log_tail(inst)}")
        return bool(ready() if callable(ready) else ready)
    try:
        wait_until(check, timeout, what)
    except AssertionError as exc:
        raise NodeError(f"{exc}\n{log_tail(inst)}") from None


def start_forwarder(inst: netns.Instance, port: int, target: tuple[str, int] | None = None,
                    name: str = "forwarder") -> subprocess.Popen[bytes]:  # fmt: skip
    """Relay the host's 127.0.0.1:``port`` to ``target`` inside the namespace (default: the same port there).

    The API server's forwarder is ``name="forwarder"``; others (a Service's ClusterIP for a
    test's client) take a name of their own, so their logs and pid files stay apart.
    """
    spec = str(port) if target is None else f"{port}={target[0]}:{target[1]}"
    log_file = logs_dir(inst) / f"{name}.log"
    log_file.unlink(missing_ok=True)
    proc = spawn(inst, name, [sys.executable, str(FORWARDER), str(inst.net_file), spec])
    await_ready(proc, inst, name, lambda: "ready" in log_file.read_text(), f"the port forwarder {name}", 20)
    return proc


def ctr_argv(inst: netns.Instance) -> list[str]:
    """``ctr`` against the node's containerd, in the node's namespaces (namespace ``k8s.io``)."""
    return [*inst.node_argv(), "ctr", "--address", str(SOCKET), "--namespace", "k8s.io"]


def _ctr(inst: netns.Instance, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ctr_argv(inst), *args], capture_output=True, text=True, timeout=120)


def _remove_containers(inst: netns.Instance) -> int:
    """Delete every container (and task) containerd holds; return how many there were."""
    ids = _ctr(inst, "containers", "list", "--quiet").stdout.split()
    if ids:
        _ctr(inst, "tasks", "delete", "--force", *ids)
        _ctr(inst, "containers", "delete", *ids)
    return len(ids)


def sign_client_cert(pki: Path, out: Path, name: str, subject: str) -> tuple[Path, Path]:
    """A client certificate for ``subject`` signed by kwokctl's CA (``pki/ca.crt``, ``ca.key``)."""
    key, csr, crt = out / f"{name}.key", out / f"{name}.csr", out / f"{name}.crt"
    steps = [["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", str(key), "-subj", subject, "-out", str(csr)],
             ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
              "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "3650", "-out", str(crt)]]
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NodeError(f"openssl failed for {name}: {proc.stderr.strip()}")
    return crt, key


def write_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def start(inst: netns.Instance, pki: Path, api_port: int, node_images: NodeImages) -> None:
    """containerd, images, kubelet and kube-proxy; returns once the kubelet is serving."""
    base = base_dir(inst)
    certs = base / "pki"
    certs.mkdir(parents=True, exist_ok=True)
    server = f"https://127.0.0.1:{api_port}"
    kubelet_crt, kubelet_key = sign_client_cert(pki, certs, "kubelet",
                                                f"/O=system:nodes/CN=system:node:{nodeconfig.NODE_NAME}")
    proxy_crt, proxy_key = sign_client_cert(pki, certs, "kube-proxy", "/CN=system:kube-proxy")
    kubelet_kubeconfig = write_file(base / "kubelet.kubeconfig", yaml.safe_dump(
        nodeconfig.kubeconfig(server, pki / "ca.crt", kubelet_crt, kubelet_key, "kubelet")))
    proxy_kubeconfig = write_file(base / "kube-proxy.kubeconfig", yaml.safe_dump(
        nodeconfig.kubeconfig(server, pki / "ca.crt", proxy_crt, proxy_key, "kube-proxy")))
    cni_dir = base / "cni"
    write_file(cni_dir / "10-lepton.conflist", json.dumps(nodeconfig.cni_conflist(), indent=2))
    containerd_toml = write_file(base / "containerd.toml", nodeconfig.containerd_config(
        root=containerd_root(inst), state=NODE_RUN / "containerd", socket=SOCKET, runc_root=NODE_RUN / "runc",
        cni_conf_dir=cni_dir, sandbox_image=node_images.pause.ref))
    resolv = write_file(base / "resolv.conf", nodeconfig.resolv_conf())
    kubelet_yaml = write_file(base / "kubelet.yaml", yaml.safe_dump(nodeconfig.kubelet_config(
        cgroup_root=inst.cgroup_root, runtime_socket=SOCKET, client_ca=pki / "ca.crt", resolv_conf=resolv)))
    proxy_yaml = write_file(base / "kube-proxy.yaml", yaml.safe_dump(
        nodeconfig.kube_proxy_config(kubeconfig=proxy_kubeconfig)))

    sweep_orphaned_containerd_roots()
    claim_containerd_root(inst)
    containerd = spawn(inst, "containerd", [*inst.node_argv(), "containerd", "--config", str(containerd_toml)])
    await_ready(containerd, inst, "containerd", lambda: _ctr(inst, "version").returncode == 0, "containerd's socket", 30)
    if _remove_containers(inst):  # a run that was killed left pods behind: start CRI afresh
        stop_pid(containerd.pid)
        containerd = spawn(inst, "containerd", [*inst.node_argv(), "containerd", "--config", str(containerd_toml)])
        await_ready(containerd, inst, "containerd", lambda: _ctr(inst, "version").returncode == 0, "containerd", 30)
    imported = images.import_images(node_images.all(), ctr_argv(inst))
    if imported:
        log(f"imported into the node's containerd: {', '.join(imported)}")

    netns.make_cgroups(inst)
    labels = ",".join(f"{k}={v}" for k, v in nodeconfig.NODE_LABELS.items())
    kubelet = spawn(inst, "kubelet", [
        *inst.node_argv(), str(versions.path_of("kubelet")), "--config", str(kubelet_yaml),
        "--kubeconfig", str(kubelet_kubeconfig), "--root-dir", str(base / "kubelet"),
        "--hostname-override", nodeconfig.NODE_NAME, "--node-ip", nodeconfig.NODE_IP,
        "--node-labels", labels, "--v", "1"])
    proxy = spawn(inst, "kube-proxy", [*inst.network_argv(), str(versions.path_of("kube-proxy")),
                                        "--config", str(proxy_yaml), "--v", "1"])
    await_ready(kubelet, inst, "kubelet", lambda: _http_ok_in(inst, "http://127.0.0.1:10248/healthz"), "kubelet /healthz")
    await_ready(proxy, inst, "kube-proxy", lambda: _http_ok_in(inst, "http://127.0.0.1:10256/healthz"),
           "kube-proxy /healthz")


def restart_kubelet(inst: netns.Instance) -> None:
    """Stop the node's kubelet and start it again with the same arguments, as a node agent upgrade does.

    SIGTERM, and no graceful node shutdown (that needs systemd's inhibitor): the kubelet
    exits and its containers run on under containerd. The new kubelet finds them, as a
    restarted kubelet does. Returns once it serves ``/healthz`` again.
    """
    pid = int(pid_file(inst, "kubelet").read_text())
    # nsenter execs the kubelet, so the process's command line is the kubelet's own
    argv = [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")]
    stop_process(inst, "kubelet")
    kubelet = spawn(inst, "kubelet", [*inst.node_argv(), *argv])
    await_ready(kubelet, inst, "kubelet", lambda: _http_ok_in(inst, "http://127.0.0.1:10248/healthz"),
                "the restarted kubelet's /healthz")  # fmt: skip


_GET = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)"


def _http_ok_in(inst: netns.Instance, url: str) -> bool:
    """GET ``url`` from inside the namespace; True on a 2xx answer."""
    proc = subprocess.run([*inst.network_argv(), sys.executable, "-c", _GET, url], capture_output=True, timeout=10)
    return proc.returncode == 0


def install_dns(kubectl: Kubectl, timeout: float = 120.0) -> None:
    """Apply CoreDNS (idempotent) and wait until its pod is Ready (it answers at ``DNS_SERVICE_IP``)."""
    kubectl.in_namespace(None).apply(nodeconfig.coredns_manifests(COREDNS_REF), "--server-side", "--force-conflicts")
    system = kubectl.in_namespace("kube-system")
    selector = ",".join(f"{k}={v}" for k, v in nodeconfig.COREDNS_LABELS.items())

    def ready() -> bool:
        return any(condition_true(p, "Ready") for p in system.get("pods", None, "-l", selector))
    wait_until(ready, timeout, "CoreDNS Ready on the real node")


def stop(inst: netns.Instance) -> None:
    """Stop kubelet, kube-proxy and kube-router, remove the node's containers, stop containerd and the forwarder."""
    current = pids(inst)
    for name in ("kubelet", "kube-proxy", KUBE_ROUTER):
        if name in current:
            stop_pid(current[name], 10)
    if "containerd" in current and pid_alive(current["containerd"]):
        _remove_containers(inst)
        stop_pid(current["containerd"], 10)
    if "forwarder" in current:
        stop_pid(current["forwarder"], 5)
    shutil.rmtree(inst.state / "pids", ignore_errors=True)
