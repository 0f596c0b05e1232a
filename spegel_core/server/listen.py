"""TCP listening sockets for ``HOST:PORT`` settings, dual-stack for ``:PORT``.

``:PORT`` (no host) means every interface, as in the Go original: one IPv6 socket
that also accepts IPv4 (``::`` without ``IPV6_V6ONLY``) where the kernel allows it,
else ``0.0.0.0``. A literal host binds that address only (``[::1]:5000`` is IPv6).
"""

from __future__ import annotations

import socket

from spegel_core.config import Address


def listen_socket(address: Address, *, backlog: int = 2048) -> socket.socket:
    """A bound, listening TCP socket for ``address``; raises OSError if it cannot bind."""
    if not address.host and socket.has_dualstack_ipv6():
        return socket.create_server(("::", address.port), family=socket.AF_INET6,
                                    dualstack_ipv6=True, backlog=backlog)
    host = address.bind_host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, address.port), family=family, backlog=backlog)
