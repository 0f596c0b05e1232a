"""This node's own addresses, so that bootstrap answers never send a node to itself.

A public core helper for discovery sources (built-in and third-party): pass a
:class:`LocalAddresses` and call :meth:`LocalAddresses.drop_own` on what you found.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable

from spegel_core.config import Address
from spegel_core.hostnames import canonical_host
from spegel_core.protocols import PeerAddress

log = logging.getLogger(__name__)

__all__ = ["WILDCARD_HOSTS", "LocalAddresses"]

#: Listen hosts that mean "every interface".
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})

#: How long the best-effort look-up of this host's name may take.
_HOSTNAME_TIMEOUT = 2.0


class LocalAddresses:
    """The addresses other nodes reach this node's router at.

    ``hosts`` are IP addresses or names (names are resolved once, on first use).
    With ``include_hostname`` the addresses of ``socket.gethostname()`` are added
    too: that is what a router bound to every interface is reached at (in a pod,
    the pod IP is in ``/etc/hosts`` under the pod's host name). Look-ups are best
    effort: a failure is logged and leaves the set smaller, never raises.

    ``port`` narrows the match: ``None`` drops an address of this node whatever
    its port (DNS answers), a number drops only ``host:port`` (static lists, where
    two nodes may share a host on different ports).
    """

    def __init__(self, hosts: Iterable[str] = (), *, port: int | None = None,
                 include_hostname: bool = False) -> None:
        self._given = [host for host in hosts if host not in WILDCARD_HOSTS]
        self.port = port
        self.include_hostname = include_hostname
        self.hosts: set[str] = set()
        self._loaded = False
        self._lock = asyncio.Lock()

    @property
    def given(self) -> tuple[str, ...]:
        """The hosts given (wildcards dropped), as given: names are not resolved here."""
        return tuple(self._given)

    @classmethod
    def for_router(cls, address: Address, *, match_port: bool) -> LocalAddresses:
        """The own addresses of a node whose router listens on ``address``.

        A specific host is the only address the router answers on; a wildcard
        means "whatever this machine's name resolves to".
        """
        specific = address.host not in WILDCARD_HOSTS
        return cls([address.host] if specific else [],
                   port=address.port if match_port else None, include_hostname=not specific)

    async def load(self) -> set[str]:
        """Resolve names and the host name once; returns the set of own hosts."""
        async with self._lock:
            if self._loaded:
                return self.hosts
            names = list(self._given)
            if self.include_hostname:
                names.append(socket.gethostname())
            for name in names:
                self.hosts.update(await _addresses_of(name))
            self._loaded = True
            log.debug("own addresses: %s", sorted(self.hosts))
            return self.hosts

    def is_own(self, peer: PeerAddress) -> bool:
        """Whether ``peer`` is this node (call :meth:`load` first)."""
        if self.port is not None and peer.port != self.port:
            return False
        return canonical_host(peer.host) in self.hosts

    async def drop_own(self, peers: Iterable[PeerAddress]) -> list[PeerAddress]:
        """``peers`` without this node's addresses and without duplicates, in order."""
        await self.load()
        return [peer for peer in dict.fromkeys(peers) if not self.is_own(peer)]

    def __repr__(self) -> str:
        state = sorted(self.hosts) if self._loaded else f"unresolved {self._given}"
        return f"<LocalAddresses {state} port={self.port}>"


async def _addresses_of(name: str) -> set[str]:
    host = canonical_host(name)
    if _is_ip(host):
        return {host}
    try:
        async with asyncio.timeout(_HOSTNAME_TIMEOUT):
            infos = await asyncio.get_running_loop().getaddrinfo(host, None,
                                                                 type=socket.SOCK_DGRAM)
    except (OSError, TimeoutError) as exc:
        log.warning("cannot resolve this node's name %r to drop it from bootstrap answers: %s",
                    name, exc or "timeout")
        return set()
    return {canonical_host(str(info[4][0])) for info in infos}


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
