"""Small helpers to drive a cluster from tests and benchmarks: a kubectl runner and ``wait_until``.

Why kubectl and not the Python client: tests then exercise exactly what a user types, the
binary is the one built at the server's version (``versions.KUBERNETES_VERSION``; the
``/usr/bin/kubectl`` on these machines is too old), and the harness stays stdlib + PyYAML.

Everything waits on a condition with a deadline (:func:`wait_until`); nothing sleeps blindly.
A failed kubectl call raises :class:`KubectlError` carrying the command line and its stderr.
"""

from __future__ import annotations

import json as jsonlib
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class KubectlError(RuntimeError):
    """kubectl exited non-zero."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"`kubectl {' '.join(args)}` exited {returncode}: {stderr.strip() or stdout.strip()}")

    @property
    def not_found(self) -> bool:
        """True when the error is a NotFound from the API server."""
        return "NotFound" in self.stderr or "not found" in self.stderr


class WaitTimeout(AssertionError):
    """:func:`wait_until` ran out of time (an AssertionError so pytest shows it as a failure)."""


#: Exceptions a poll treats as "not yet": the object is not there (NotFound, API not up yet), a
#: key or index is missing, or a value is still None. Anything else is a real error and propagates.
RETRY_ON: tuple[type[BaseException], ...] = (KubectlError, LookupError, TypeError)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.25,
               retry_on: tuple[type[BaseException], ...] = RETRY_ON) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Fails with ``WaitTimeout("timed out after Ns waiting for <what>; last: ...")``. Exceptions in
    ``retry_on`` count as "not yet" (the last one is reported), so a predicate may simply index
    into an object that is not there yet; any other exception propagates at once (fail fast,
    e.g. a process under test that exited).
    """
    deadline = time.monotonic() + timeout
    last: str = "never evaluated"
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = repr(value)
        except retry_on as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}; last: {last}")
        time.sleep(interval)


def _to_text(manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    if isinstance(manifest, str):
        return manifest
    if isinstance(manifest, Mapping):
        return jsonlib.dumps(dict(manifest))
    return yaml.safe_dump_all([dict(m) for m in manifest], sort_keys=False)


class Kubectl:
    """Runs one kubectl binary against one kubeconfig (and optionally one namespace).

    ``kubectl("get", "pods")`` returns stdout; ``kubectl.json("get", "pods")`` parses ``-o json``.
    """

    def __init__(self, binary: Path | str, kubeconfig: Path | str, namespace: str | None = None,
                 timeout: float = 60.0) -> None:
        self.binary = str(binary)
        self.kubeconfig = str(kubeconfig)
        self.namespace = namespace
        self.timeout = timeout

    def in_namespace(self, namespace: str | None) -> Kubectl:
        """A copy bound to ``namespace`` (``None``: cluster scope / kubeconfig default)."""
        return Kubectl(self.binary, self.kubeconfig, namespace, self.timeout)

    @property
    def env(self) -> dict[str, str]:
        """Environment with ``KUBECONFIG`` set, for subprocesses (e.g. the operator under test)."""
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def run(self, *args: str, input: str | None = None, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl; raise :class:`KubectlError` on a non-zero exit when ``check``."""
        cmd = [self.binary, "--kubeconfig", self.kubeconfig]
        if self.namespace is not None:
            cmd += ["--namespace", self.namespace]
        cmd += list(args)
        try:
            proc = subprocess.run(cmd, input=input, capture_output=True, text=True,
                                  timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired as exc:
            raise KubectlError(args, -1, "", f"timed out after {exc.timeout} s") from exc
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def __call__(self, *args: str, input: str | None = None, timeout: float | None = None) -> str:
        """stdout of ``kubectl ARGS``."""
        return self.run(*args, input=input, timeout=timeout).stdout

    def json(self, *args: str, timeout: float | None = None) -> Any:
        """Parsed ``kubectl ARGS -o json``."""
        return jsonlib.loads(self.run(*args, "-o", "json", timeout=timeout).stdout)

    def get(self, kind: str, name: str | None = None, *selectors: str) -> Any:
        """One object (``name`` given) or a List's ``items``; ``selectors`` e.g. ``"-l", "a=b"``."""
        if name is not None:
            return self.json("get", kind, name, *selectors)
        return self.json("get", kind, *selectors)["items"]

    def get_or_none(self, kind: str, name: str) -> Any:
        """The object, or ``None`` when it does not exist."""
        try:
            return self.json("get", kind, name)
        except KubectlError as exc:
            if exc.not_found:
                return None
            raise

    def apply(self, manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
              *extra: str) -> str:
        """``kubectl apply -f -`` (server-side apply when ``"--server-side"`` is in ``extra``)."""
        return self("apply", "-f", "-", *extra, input=_to_text(manifest))

    def create(self, manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
        """``kubectl create -f -``."""
        return self("create", "-f", "-", input=_to_text(manifest))

    def delete(self, kind: str, *names: str, wait: bool = False) -> str:
        """Delete, ignoring objects that are already gone."""
        return self("delete", kind, *names, "--ignore-not-found", f"--wait={'true' if wait else 'false'}")


# ---------------------------------------------------------------------------------------------
# small readers of object state, shared by tests


def condition(obj: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    """The status condition of type ``ctype``, or ``None``."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def condition_true(obj: Mapping[str, Any], ctype: str) -> bool:
    """Whether condition ``ctype`` has status "True"."""
    cond = condition(obj, ctype)
    return cond is not None and cond.get("status") == "True"


def node_ready(node: Mapping[str, Any]) -> bool:
    """Node has ``Ready=True``."""
    return condition_true(node, "Ready")


def pod_phase(pod: Mapping[str, Any]) -> str:
    """``status.phase`` ('' when not set yet)."""
    return str(pod.get("status", {}).get("phase", ""))


def terminated_states(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``state.terminated`` of every container that has one."""
    out = []
    for cs in pod.get("status", {}).get("containerStatuses", []) or []:
        term = cs.get("state", {}).get("terminated")
        if term:
            out.append(dict(term))
    return out
