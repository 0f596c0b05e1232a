"""A lean HTTP/1.1 client for benchmarks: one socket, ``recv_into`` a reused buffer.

A heavyweight client would measure itself rather than the server.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

BUFFER = 4 * 1024 * 1024


@dataclass
class Timing:
    status: int
    bytes: int
    ttfb_s: float
    total_s: float


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.buffer = bytearray(BUFFER)
        self.view = memoryview(self.buffer)

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def get(self, path: str, headers: dict[str, str] | None = None) -> Timing:
        sock = self._connect()
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        started = time.perf_counter()
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        ttfb = 0.0
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before headers")
            if not head:
                ttfb = time.perf_counter() - started
            head += chunk
        header_bytes, _, rest = head.partition(b"\r\n\r\n")
        status_line, *header_lines = header_bytes.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        received = len(rest)
        while received < length:
            n = sock.recv_into(self.view, min(BUFFER, length - received))
            if n == 0:
                raise ConnectionError(f"closed after {received} of {length} bytes")
            received += n
        return Timing(status, received, ttfb, time.perf_counter() - started)
