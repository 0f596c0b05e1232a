"""What a flood of clients may take from the mirror, and what the node's own client keeps.

uvicorn's ``limit_concurrency`` counts open *connections* as well as requests, and
answers ``503`` beyond it: 8000 idle connections (a few hundred from each of a few dozen
pods) left the node's own containerd with 503s until the header timeout closed them.
A 503 is the worst answer a mirror can give (containerd's handling of a 5xx depends on
its version), and idle sockets cost uvloop almost nothing. So the server runs without
``limit_concurrency`` and this module bounds, instead:

- **requests in flight** (:attr:`ConnectionLimits.max_requests`): beyond it a request
  gets a fast ``429 TOOMANYREQUESTS`` with ``Retry-After``, never a 503. The node's own
  clients keep a reserved share (:attr:`ConnectionLimits.reserved_own`): other clients
  are answered 429 once ``max_requests - reserved_own`` are in flight;
- **open connections** (:attr:`ConnectionLimits.max_connections`, at most the open-file
  limit less a margin, which :func:`raise_open_files` lifts to its hard limit): beyond it
  a new connection from anyone but the node itself is closed at once.

The node's own clients: a client whose address is the address it connected to (a
process on the node dialling the node's IP, which is how containerd reaches its mirror)
or the loopback default source (127.0.0.1, ::1).
Per-client caps and the header deadline (slowloris) are in
:mod:`spegel_core.server.zerocopy`.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: File descriptors kept free of client connections (files served, peers, the DHT).
FD_MARGIN = 512
_OWN_DEFAULT_SOURCES = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
_LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What clients may hold (see this module and :mod:`spegel_core.server.zerocopy`).

    :param max_client_connections: open connections per client address.
    :param header_timeout: seconds a connection has to send a request's headers.
    :param max_connections: open connections in all (None: from the open-file limit).
    :param max_requests: requests in flight in all; beyond it, 429.
    :param reserved_own: of ``max_requests``, how many only the node's own clients use.
    """

    max_client_connections: int = 128
    header_timeout: float = 10.0
    max_connections: int | None = None
    max_requests: int = 4096
    reserved_own: int = 1024

    def connection_cap(self) -> int:
        """Open connections allowed in all: the setting, within the open-file limit."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        by_files = max(64, soft - FD_MARGIN) if soft != resource.RLIM_INFINITY else 1 << 20
        return min(by_files, self.max_connections or 1 << 20)


def raise_open_files() -> int:
    """Lift the soft open-file limit to the hard one.

    Tens of thousands of idle sockets are cheap.

    :returns: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            log.debug("cannot raise the open-file limit to %d: %s", hard, exc)
    return soft


def is_own_client(client_host: str | None, local_host: str | None) -> bool:
    """Whether a connection comes from this node itself (see the module docstring)."""
    if client_host is None:
        return True  # a unix socket
    return client_host in _OWN_DEFAULT_SOURCES or client_host == local_host


class Refusals:
    """Counts refusals of one server and logs them at most every few seconds."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self._logged = 0.0

    def refused(self, what: str, limit: int) -> None:
        """Count one refused connection or request (``what``) at ``limit``."""
        if what == "connection":
            self.connections += 1
        else:
            self.requests += 1
        now = time.monotonic()
        if now - self._logged >= _LOG_INTERVAL:
            self._logged = now
            log.warning("%d %ss at the server's limit (%d); refusing more from clients "
                        "other than this node (refused so far: %d connections, "
                        "%d requests answered 429)", limit, what, limit,
                        self.connections, self.requests)


_BODY = json.dumps({"errors": [{
    "code": "TOOMANYREQUESTS",
    "message": "too many requests in flight; retry shortly",
    "detail": None,
}]}).encode()


async def too_many_requests(scope: Any, receive: Any, send: Any) -> None:
    """ASGI app: a fast ``429`` with an OCI error body and ``Retry-After: 1``."""
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_BODY)).encode()),
        (b"retry-after", b"1"),
    ]})
    await send({"type": "http.response.body", "body": _BODY})
