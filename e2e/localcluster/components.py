"""Kill and restart control-plane processes of the local cluster, for chaos tests.

kwokctl v0.8.0 starts and stops only whole clusters (``kwokctl --help``: no per-component
command), so this does what a kubelet does for a crashed static pod: it reads a running
component's command line, working directory and environment from ``/proc``
(:func:`snapshot`), kills it (SIGKILL by default: no graceful shutdown, connections reset) and
starts the same command again inside the cluster's network namespace, appending to the same log
under ``clusters/lepton/logs/`` and rewriting kwokctl's pid file, so that ``kwokctl delete
cluster`` and :func:`localcluster.local.components_alive` keep working on the new process.

kube-controller-manager and kube-scheduler exit when they cannot renew their leader lease for
10 s. An outage that long kills them as a side effect; :func:`revive` restarts any component of
a snapshot that died (again as a kubelet would), and :func:`restart` does so once the API
answers again, reporting what it revived.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localcluster import local, netns, versions
from localcluster.handle import api_ready
from localcluster.kube import Kubectl, wait_until
from localcluster.sharing import pid_alive

APISERVER = "kube-apiserver"
ETCD = "etcd"


@dataclass(frozen=True)
class Component:
    """How one control-plane process was started: enough to start it again as it was."""

    name: str
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class Restart:
    """What :func:`restart` did: which components, how long the API was unusable, what it revived."""

    components: tuple[str, ...]
    outage_seconds: float
    revived: tuple[str, ...]


#: Processes this module started (and must reap): pid -> Popen.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def _read_nul_separated(path: Path) -> list[str]:
    return [part.decode(errors="surrogateescape") for part in path.read_bytes().split(b"\0") if part]


def snapshot(names: Sequence[str] | None = None) -> dict[str, Component]:
    """The running components (all of them, or ``names``) as they were started."""
    found: dict[str, Component] = {}
    for name, pid in sorted(local.component_pids().items()):
        if names is not None and name not in names:
            continue
        proc = Path(f"/proc/{pid}")
        if pid <= 0 or not pid_alive(pid):
            raise RuntimeError(f"component {name} (pid {pid}) is not running: nothing to snapshot")
        env = dict(item.split("=", 1) for item in _read_nul_separated(proc / "environ") if "=" in item)
        found[name] = Component(name, tuple(_read_nul_separated(proc / "cmdline")), os.readlink(proc / "cwd"), env)
    missing = set(names or ()) - set(found)
    if missing:
        raise RuntimeError(f"no pid file for {sorted(missing)} under {local.pids_dir()}")
    return found


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def _gone(pid: int) -> bool:
    """The process has exited with all its threads (its ports and files are free).

    A SIGKILLed Go program's main thread turns zombie first while its other threads are still
    exiting, and the files (the listening socket) go only with the last thread: a restart in
    that window fails with "address already in use" (seen under a loaded ``make test``).
    """
    started = _STARTED.get(pid)
    if started is not None and started.poll() is not None:
        del _STARTED[pid]
        return True
    return not pid_alive(pid) and _threads(pid) <= 1


def kill(name: str, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
    """Send ``sig`` to component ``name`` and wait until its process is gone."""
    pid = local.component_pids()[name]
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    wait_until(lambda: _gone(pid), timeout, f"{name} (pid {pid}) to exit after signal {sig}", interval=0.05)


def start(component: Component) -> int:
    """Start ``component`` again inside the cluster's network namespace; record and return its pid."""
    log = local.logs_dir() / f"{component.name}.log"
    with log.open("ab") as out:
        out.write(f"\n=== restarted by localcluster.components at {time.strftime('%H:%M:%S')} ===\n".encode())
        out.flush()
        process = subprocess.Popen([*netns.instance().network_argv(), *component.argv], cwd=component.cwd,
                                   env=dict(component.env), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    _STARTED[process.pid] = process  # nsenter execs the component: this pid is the component's
    (local.pids_dir() / f"{component.name}.pid").write_text(f"{process.pid}\n")
    return process.pid


def revive(components: Mapping[str, Component]) -> list[str]:
    """Start every component of ``components`` whose process is gone; return their names."""
    pids = local.component_pids()
    dead = [name for name in components if _gone(pids.get(name, -1)) or pids.get(name, -1) <= 0]
    for name in dead:
        start(components[name])
    return dead


def kubectl() -> Kubectl:
    return Kubectl(versions.path_of("kubectl"), local.kubeconfig())


def serving(k: Kubectl) -> bool:
    """``/readyz`` passes and a read reaches etcd (readyz caches its etcd check for a moment)."""
    return api_ready(k) and k.run("get", "--raw", "/api/v1/namespaces/default", timeout=5, check=False).returncode == 0


def restart(names: Sequence[str], *, sig: int = signal.SIGKILL, timeout: float = 90.0) -> Restart:
    """Kill components ``names`` together, start them again, wait until the API serves again.

    The outage is measured from the kill until ``/readyz`` passes and a read reaches etcd. Any other
    component that died meanwhile (leader election lost) is revived, and the API waited for
    again.
    """
    every = snapshot()
    unknown = set(names) - set(every)
    if unknown:
        raise RuntimeError(f"unknown components {sorted(unknown)}; running: {sorted(every)}")
    k = kubectl()
    killed = time.monotonic()
    for name in names:
        kill(name, sig)
    for name in sorted(names, key=lambda n: n != ETCD):  # etcd first: kube-apiserver needs its storage to start
        start(every[name])
    restarted = {name: every[name] for name in names}

    def back() -> bool:
        revive(restarted)  # one that exited at once is started again, as a kubelet restarts a static pod
        return serving(k)

    wait_until(back, timeout, f"the API serving again after restarting {', '.join(names)}", interval=0.1)
    outage = time.monotonic() - killed
    revived = revive({name: c for name, c in every.items() if name not in names})
    if revived:
        wait_until(lambda: serving(k), timeout, f"the API serving again after reviving {', '.join(revived)}")
    return Restart(tuple(names), outage, tuple(revived))
