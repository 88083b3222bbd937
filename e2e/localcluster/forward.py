"""TCP forwarder from the host's loopback into the cluster's network namespace.

``python forward.py NETNS_FILE SPEC [SPEC ...]``, each ``SPEC`` either ``PORT`` or
``PORT=HOST:TARGET``: listens on the host's ``127.0.0.1:PORT``, then enters the namespace with
``setns(2)`` and relays every connection to ``127.0.0.1:PORT`` (or ``HOST:TARGET``) there. A
socket keeps the namespace it was created in, so the listeners made before ``setns`` stay on
the host while every upstream socket is made inside. This keeps the kubeconfig's
``https://127.0.0.1:<port>`` valid for everything on the host (pytest, kubectl, a local
operator) although the API server lives in the namespace; with a Service's ClusterIP as
``HOST`` every connection goes through kube-proxy like a pod's, so load spreads over the
Service's ready endpoints. Prints ``ready`` once listening and
inside. Stdlib only: it is started as a script by :mod:`localcluster.realnode` and stopped with
SIGTERM (or swept with the namespace).
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                sock.shutdown(how)
            except OSError:
                pass


def relay(client: socket.socket, target: tuple[str, int]) -> None:
    """Relay one accepted connection to ``target`` both ways until both sides close (also used by ``activation``)."""
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _accept(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=relay, args=(client, target), daemon=True).start()


def parse_spec(spec: str) -> tuple[int, tuple[str, int]]:
    """``"8443"`` -> ``(8443, ("127.0.0.1", 8443))``; ``"9000=10.0.0.7:8000"`` -> ``(9000, ("10.0.0.7", 8000))``."""
    port, _, target = spec.partition("=")
    if not target:
        return int(port), ("127.0.0.1", int(port))
    host, _, target_port = target.rpartition(":")
    return int(port), (host, int(target_port))


def main(argv: list[str]) -> int:
    netns, specs = argv[0], [parse_spec(s) for s in argv[1:]]
    listeners = []
    for port, target in specs:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(256)
        listeners.append((listener, target))
    fd = os.open(netns, os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
    os.close(fd)
    print("ready", flush=True)
    threads = [threading.Thread(target=_accept, args=pair, daemon=True) for pair in listeners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
