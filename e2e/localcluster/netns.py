"""The local cluster's private namespaces and cgroups: create, enter, sweep, remove, audit.

Everything of one cluster instance (kwokctl's control plane, containerd, kubelet, kube-proxy,
pods, the port forwarder's upstream side) runs inside one **network namespace** the harness
creates, so the host's ``ip_forward``, iptables and routes are never touched; containerd and
kubelet also share one private **mount namespace**, in which

* plain files are bind-mounted over the global sysctls the kubelet writes
  (:data:`KUBELET_SYSCTLS`): its writes land in the files, the host keeps its values;
* fresh tmpfs cover ``/run`` (containerd's shim sockets, runc state, pod network namespaces),
  ``/var/log`` (pod logs and kubelet's ``/var/log/containers`` links) and ``/var/lib/cni``
  (host-local IPAM and the CNI result cache), so nothing of theirs lands on the host.

Both namespaces are pinned by bind mounts on files in ``/run/lepton/<id>/`` (a private bind
mount of its own), never in the host's ``/run/netns`` (``ip netns add`` would leave that mounted
for good); they are entered with ``nsenter`` (not ``ip netns exec``, which remounts ``/sys``).
The namespace has one address, ``nodeconfig.NODE_IP``, on a veth pair whose two ends both stay
inside (the kernel has no ``dummy`` link type).

``<id>`` is a hash of the state directory, so clusters of two checkouts run side by side: their
namespaces, kubelet ``cgroupRoot`` (``/lepton-<id>``) and file paths never meet.

Teardown (:func:`destroy`) does not trust pid files alone: it kills every process whose network
or mount namespace is the instance's, or that sits in its cgroup tree, removes the cgroup trees
depth-first in every hierarchy, then unmounts the namespace files and the directory.
:func:`leftovers` lists what remains of an instance; the teardown test asserts it is empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster import nodeconfig
from localcluster.paths import state_dir

#: Global sysctls the kubelet writes (``kubelet/cm`` kernel tunables), redirected to files.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
#: Directories covered by a private tmpfs inside the node's mount namespace.
PRIVATE_TMPFS = ("/run", "/var/log", "/var/lib/cni")
RUN_ROOT = Path("/run/lepton")
#: Host tools the namespaces need (util-linux, iproute2).
TOOLS = ("unshare", "nsenter", "mount", "umount", "ip")


class NamespaceError(RuntimeError):
    """A namespace could not be made or entered; the message says which command failed."""


@dataclass(frozen=True)
class Instance:
    """One cluster instance's namespace files, cgroup root and the record of its namespaces."""

    id: str
    run_dir: Path
    state: Path

    @property
    def net_file(self) -> Path:
        return self.run_dir / "net"

    @property
    def mnt_file(self) -> Path:
        return self.run_dir / "mnt"

    @property
    def cgroup_root(self) -> str:
        return f"/lepton-{self.id}"

    @property
    def record(self) -> Path:
        """Inodes of the namespaces, kept after they are gone so leftovers can still be found."""
        return self.state / "namespaces.json"

    def network_argv(self) -> list[str]:
        """Prefix that runs a command inside the cluster's network namespace."""
        return ["nsenter", f"--net={self.net_file}", "--"]

    def node_argv(self) -> list[str]:
        """Prefix that runs a command inside the node's network and mount namespaces."""
        return ["nsenter", f"--net={self.net_file}", f"--mount={self.mnt_file}", "--"]


def instance(state: Path | None = None) -> Instance:
    """The instance of ``state`` (default: this checkout's state directory)."""
    state = state or state_dir()
    ident = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:8]
    return Instance(ident, RUN_ROOT / ident, state / "node")


def _run(argv: Sequence[str], what: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise NamespaceError(f"{what}: `{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def host_problems() -> list[str]:
    """Why this machine cannot host the real node ([] when it can)."""
    if not Path("/proc/self/ns/net").exists():
        return ["this is not Linux with namespaces (/proc/self/ns/net is missing)"]
    if os.geteuid() != 0:
        return ["the real node needs root (network and mount namespaces, cgroups, containerd)"]
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return [f"missing host tools: {', '.join(missing)} (util-linux, iproute2)"]
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return [f"cannot create network/mount namespaces here: {probe.stderr.strip()}"]
    if not cgroup_hierarchies():
        return ["no cgroup filesystem is mounted under /sys/fs/cgroup"]
    return []


# ---------------------------------------------------------------------------------------------
# cgroups


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] in ("cgroup", "cgroup2"):
            points.append(Path(fields[0].split()[4]))
    return points


def cgroup_dirs(inst: Instance) -> list[Path]:
    """The instance's cgroup root in every hierarchy where it exists."""
    return [h / inst.cgroup_root.lstrip("/") for h in cgroup_hierarchies()
            if (h / inst.cgroup_root.lstrip("/")).is_dir()]


def make_cgroups(inst: Instance) -> None:
    """Create the kubelet's ``cgroupRoot`` in every hierarchy (kubelet refuses a missing one)."""
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / inst.cgroup_root.lstrip("/")
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset child starts empty
            if (path / name).exists() and not (path / name).read_text().strip():
                (path / name).write_text((hierarchy / name).read_text())


def _cgroup_pids(inst: Instance) -> set[int]:
    pids: set[int] = set()
    for root in cgroup_dirs(inst):
        for procs in root.rglob("cgroup.procs"):
            try:
                pids |= {int(p) for p in procs.read_text().split()}
            except OSError:
                pass
    return pids


def remove_cgroups(inst: Instance) -> None:
    """Remove the instance's cgroup trees depth-first (they must hold no process)."""
    for root in cgroup_dirs(inst):
        for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            path.rmdir()
        root.rmdir()


# ---------------------------------------------------------------------------------------------
# namespaces


def _ns_inode(pid: str, kind: str) -> int:
    try:
        link = os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return -1
    return int(link.split("[", 1)[1].rstrip("]"))


def recorded_inodes(inst: Instance) -> dict[str, int]:
    """``{"net": inode, "mnt": inode}`` recorded when the namespaces were made ({} if never)."""
    try:
        data: dict[str, int] = json.loads(inst.record.read_text())
        return data
    except (OSError, ValueError):
        return {}


def processes(inst: Instance, inodes: dict[str, int] | None = None) -> list[int]:
    """Pids in the instance's network or mount namespace or its cgroup tree (never our own).

    ``inodes`` default to the recorded ones (pass them once the state directory is gone).
    """
    inodes = inodes if inodes is not None else recorded_inodes(inst)
    found = _cgroup_pids(inst)
    if inodes:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (_ns_inode(entry.name, "net") == inodes["net"]
                                         or _ns_inode(entry.name, "mnt") == inodes["mnt"]):
                found.add(int(entry.name))
    found.discard(os.getpid())
    return sorted(found)


def kill_all(inst: Instance, timeout: float = 20.0) -> None:
    """SIGKILL every process of the instance until none is left (reaping our own children)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = processes(inst)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise NamespaceError(f"processes of the cluster instance survive SIGKILL: {alive}")
        time.sleep(0.1)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "(gone)"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _mounted(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def mounts(inst: Instance) -> list[str]:
    """Host mount points of the instance (its run directory, namespace files, state directory)."""
    roots = (str(inst.run_dir), str(inst.state))
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(roots)]


def create(inst: Instance, sysctl_dir: Path) -> None:
    """Make the network and mount namespaces, the veth address and the private mounts."""
    inst.run_dir.mkdir(parents=True, exist_ok=True)
    if not _mounted(inst.run_dir):  # a namespace file may only be bound below a private mount
        _run(["mount", "--bind", str(inst.run_dir), str(inst.run_dir)], "bind the run directory")
        _run(["mount", "--make-private", str(inst.run_dir)], "make the run directory private")
    inst.net_file.touch()
    inst.mnt_file.touch()
    _run(["unshare", f"--net={inst.net_file}", f"--mount={inst.mnt_file}", "--propagation", "private", "true"],
         "create the namespaces")
    inst.state.mkdir(parents=True, exist_ok=True)
    inst.record.write_text(json.dumps({"net": os.stat(inst.net_file).st_ino,
                                       "mnt": os.stat(inst.mnt_file).st_ino}))
    ip = f"{nodeconfig.NODE_IP}/{nodeconfig.NODE_PREFIX}"
    net_script = ("set -e; ip link set lo up; ip link add lnode0 type veth peer name lnode1; "
                  f"ip addr add {ip} dev lnode0; ip link set lnode0 up; ip link set lnode1 up; "
                  "ip route add default dev lnode0")
    _run([*inst.network_argv(), "sh", "-c", net_script], "address the network namespace")
    Path("/var/lib/cni").mkdir(parents=True, exist_ok=True)  # mount point only; stays empty on the host
    sysctl_dir.mkdir(parents=True, exist_ok=True)
    binds = []
    for name in KUBELET_SYSCTLS:
        source = Path("/proc/sys") / name
        if source.exists():
            copy = sysctl_dir / name.replace("/", ".")
            copy.write_text(source.read_text())
            binds.append(f"mount --bind {copy} {source}")
    tmpfs = [f"mount -t tmpfs -o mode=0755 lepton-node {d}" for d in PRIVATE_TMPFS]
    _run([*inst.node_argv(), "sh", "-c", "set -e; " + "; ".join(binds + tmpfs)], "set up the mount namespace")


def destroy(inst: Instance) -> None:
    """Kill every process of the instance, remove its cgroups, unmount and delete its namespaces."""
    kill_all(inst)
    remove_cgroups(inst)
    for path in (inst.net_file, inst.mnt_file, inst.run_dir):
        if _mounted(path):
            _run(["umount", str(path)], f"unmount {path}")
    if inst.run_dir.exists():
        shutil.rmtree(inst.run_dir)
    try:
        RUN_ROOT.rmdir()
    except OSError:
        pass  # another instance's directory is still there


def leftovers(inst: Instance, inodes: dict[str, int] | None = None) -> dict[str, list[str]]:
    """What is left of the instance: processes, host mounts, cgroup dirs, its run directory."""
    return {
        "processes": [f"{p} {_comm(p)}" for p in processes(inst, inodes) if not _zombie(p)],
        "mounts": mounts(inst),
        "cgroups": [str(p) for p in cgroup_dirs(inst)],
        "namespace files": [str(p) for p in (inst.run_dir,) if p.exists()],
    }
