"""Real ``spegel registry`` processes on free loopback addresses, for tests and benchmarks.

:class:`NodeProcess` itself is public core API (:mod:`spegel_core.node_process`); this
module adds :func:`free_loopback_ip`.
"""

from __future__ import annotations

import itertools
import os
import socket

from spegel_core.node_process import METRICS_PORT, NodeProcess

__all__ = ["METRICS_PORT", "NodeProcess", "free_loopback_ip"]

_counter = itertools.count()


def free_loopback_ip(port: int = 5000) -> str:
    """A 127.x.y.z address whose node ports are free right now.

    Those are ``port`` (TCP), ``port + 1`` (UDP) and the metrics port (TCP
    :data:`METRICS_PORT`).

    Each call returns a different address, so tests can run nodes on the same
    ports as a real cluster without colliding.
    """
    base = 10 + (os.getpid() % 200)
    for _ in range(2000):
        n = next(_counter)
        ip = f"127.{base}.{(n // 250) % 250}.{2 + n % 250}"
        if _bindable(ip, port):
            return ip
    raise RuntimeError("no free loopback address found")


def _bindable(ip: str, port: int) -> bool:
    for kind, number in ((socket.SOCK_STREAM, port), (socket.SOCK_DGRAM, port + 1),
                         (socket.SOCK_STREAM, METRICS_PORT)):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, number))
            except OSError:
                return False
    return True
