"""``--peer-cidrs``: the networks a node trusts peers to be in.

The mirror never asks a provider outside them for content, and the Kademlia router
drops datagrams from outside them and ignores contacts outside them in answers.
An empty list trusts every address (the default).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["Network", "PeerFilter", "parse_networks"]


def parse_networks(values: Iterable[str]) -> list[Network]:
    """``10.0.0.0/8``-style networks (a bare address is a /32 or /128); ValueError if bad."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not a network: {value[:60]!r} (expected e.g. 10.0.0.0/8)") from None
    return networks


class PeerFilter:
    """Whether an address may be a peer. Decisions are cached (a cluster has few)."""

    def __init__(self, networks: Iterable[str | Network] = ()) -> None:
        self.networks: tuple[Network, ...] = tuple(
            n if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)
            else parse_networks([n])[0] for n in networks)
        self.allows = functools.lru_cache(maxsize=4096)(self._allows)

    @property
    def restricted(self) -> bool:
        """Whether any network was given (else every address is allowed)."""
        return bool(self.networks)

    def _allows(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
        except ValueError:
            return False  # a name, not an address: only addresses can be checked
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def __repr__(self) -> str:
        shown = ",".join(map(str, self.networks)) or "any"
        return f"<PeerFilter {shown}>"
