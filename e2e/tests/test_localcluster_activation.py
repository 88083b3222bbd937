"""The scale-from-zero harness's Service stand-in: refuses with no endpoint, relays to one, refuses again (no cluster)."""

from __future__ import annotations

import socket
import threading

import pytest

from localcluster.activation import ServiceStandIn


def echo_server() -> tuple[socket.socket, str]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                while data := connection.recv(4096):
                    connection.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


def roundtrip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"ping")
        return client.recv(4)


def test_connections_are_refused_without_an_endpoint_as_kube_proxy_does() -> None:
    listener, address = echo_server()
    service = ServiceStandIn()
    try:
        with pytest.raises(ConnectionRefusedError):
            roundtrip(service.port)
        service.set_endpoints([address])
        assert roundtrip(service.port) == b"ping"
        service.set_endpoints([])
        with pytest.raises(ConnectionRefusedError):
            roundtrip(service.port)
        service.set_endpoints([address])  # the same port again, as a Service's address stays
        assert roundtrip(service.port) == b"ping"
    finally:
        service.close()
        listener.close()
