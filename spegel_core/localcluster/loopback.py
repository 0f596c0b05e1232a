"""Free loopback addresses and ports for nodes and servers run on one machine.

Each node of a local cluster gets its own 127.x.y.z address and uses the same ports
as in a real cluster (mirror, router and metrics), so nodes never collide.
"""

from __future__ import annotations

import itertools
import os
import socket

from spegel_core.node_process import METRICS_PORT

__all__ = ["free_loopback_ip", "free_port"]

_counter = itertools.count()


def free_loopback_ip(port: int = 5000) -> str:
    """A 127.x.y.z address whose node ports are free right now.

    Those are ``port`` (TCP), ``port + 1`` (UDP) and the metrics port (TCP
    :data:`~spegel_core.node_process.METRICS_PORT`). Each call returns a different
    address, so nodes can run on the same ports as in a real cluster.

    :param port: the node's mirror port.
    :returns: the address.
    :raises RuntimeError: no free address was found.
    """
    base = 10 + (os.getpid() % 200)
    for _ in range(2000):
        n = next(_counter)
        ip = f"127.{base}.{(n // 250) % 250}.{2 + n % 250}"
        if _bindable(ip, port):
            return ip
    raise RuntimeError("no free loopback address found")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for a server started next).

    :param host: the loopback address the server will listen on.
    :returns: the port.
    """
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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
