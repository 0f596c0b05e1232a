"""The test kit's throttled upstream proxy, over real loopback TCP."""

from __future__ import annotations

import socket
import threading
import time

from spegel_core.testing.throttle import ThrottledProxy


def _server(payload: bytes) -> tuple[socket.socket, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        for _ in range(2):  # bounded: the test opens two connections
            conn, _ = listener.accept()
            with conn:
                conn.recv(100)
                conn.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _fetch(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=30) as conn:
        conn.sendall(b"GET")
        out = bytearray()
        while chunk := conn.recv(65536):
            out += chunk
    return bytes(out)


def test_every_connection_shares_one_rate_and_bytes_are_counted() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    listener, thread = _server(payload)
    rate = 4e6
    with listener, ThrottledProxy("127.0.0.1", listener.getsockname()[1], rate) as proxy:
        started = time.monotonic()
        results: list[bytes] = []
        clients = [threading.Thread(target=lambda: results.append(
            _fetch((proxy.host, proxy.port)))) for _ in range(2)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=60)
        elapsed = time.monotonic() - started
        assert results == [payload, payload]
        assert proxy.bytes_down == 2 * len(payload)
        assert proxy.bytes_up == 2 * len(b"GET")
        assert proxy.connections == 2
        # Two copies through one bucket take at least their size over the rate (less
        # the bucket's burst); a slow machine only makes it longer.
        assert elapsed >= (2 * len(payload) - 4 * 65536) / rate
        proxy.reset()
        assert proxy.bytes_down == 0
    thread.join(timeout=10)
