"""Parsing of static peer multiaddrs (``/ip4/10.0.0.5/udp/5001``) with py-multiaddr.

Accepted: one host part, ``/ip4/IP``, ``/ip6/IP``, ``/dns/NAME``, ``/dns4/NAME``
or ``/dns6/NAME``, then optionally ``/udp/PORT``. Without a port the peer gets
the default (the port of ``--router-addr``: every node uses the same ports). The
router speaks UDP, so ``/tcp/...`` is refused rather than silently reinterpreted,
and so is anything after the port (``/p2p/<id>``, ``/quic``): this router has no
peer ids to check.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

import multiaddr  # type: ignore[import-untyped]
import multiaddr.exceptions  # type: ignore[import-untyped]

from spegel_core.protocols import PeerAddress

__all__ = ["HOST_PROTOCOLS", "StaticPeer", "parse_static_peer"]

HostProtocol = Literal["ip4", "ip6", "dns", "dns4", "dns6"]
#: The protocols that may name a peer's host.
HOST_PROTOCOLS: tuple[HostProtocol, ...] = ("ip4", "ip6", "dns", "dns4", "dns6")
_BY_NAME: dict[str, HostProtocol] = {name: name for name in HOST_PROTOCOLS}


@dataclass(frozen=True, slots=True)
class StaticPeer:
    """One parsed static peer: an IP address, or a name resolved at bootstrap time."""

    protocol: HostProtocol
    host: str
    port: int
    #: The multiaddr as written.
    text: str = ""

    @property
    def is_name(self) -> bool:
        """Whether ``host`` is a DNS name (``/dns``, ``/dns4``, ``/dns6``)."""
        return self.protocol.startswith("dns")

    def address(self) -> PeerAddress:
        """The peer as a :class:`PeerAddress` (only for ``/ip4`` and ``/ip6`` peers)."""
        if self.is_name:
            raise ValueError(f"{self.text or self.host} names a host; resolve it first")
        return PeerAddress(self.host, self.port)

    def __str__(self) -> str:
        return f"/{self.protocol}/{self.host}/udp/{self.port}"


def parse_static_peer(text: str, *, default_port: int) -> StaticPeer:
    """Parse one multiaddr; raises ``ValueError`` with a one-line reason."""
    value = text.strip()
    if not value.startswith("/"):
        raise ValueError(f"{value[:80]!r} is not a multiaddr "
                         "(expected e.g. /ip4/10.0.0.5/udp/5001)")
    try:
        parts = [(str(proto.name), value_) for proto, value_ in multiaddr.Multiaddr(value).items()]
    except (multiaddr.exceptions.Error, ValueError, TypeError) as exc:
        raise ValueError(f"invalid multiaddr {value[:80]!r}: {_reason(exc)}") from None
    if not parts:
        raise ValueError(f"invalid multiaddr {value[:80]!r}: it is empty")
    (first, host), rest = parts[0], parts[1:]
    protocol = _BY_NAME.get(first)
    if protocol is None:
        raise ValueError(f"{value[:80]!r} must start with /ip4, /ip6, /dns, /dns4 or /dns6 "
                         f"(not /{first})")
    port = default_port
    if rest:
        transport, port_text = rest[0]
        if transport == "tcp":
            raise ValueError(f"{value[:80]!r}: the router speaks UDP; write /udp/PORT, not /tcp")
        if transport != "udp":
            raise ValueError(f"{value[:80]!r}: expected /udp/PORT after the host, not /{transport}")
        port = int(str(port_text))
        if port == 0:
            raise ValueError(f"{value[:80]!r}: port 0 is not a peer's port")
        if len(rest) > 1:
            raise ValueError(f"{value[:80]!r}: nothing may follow /udp/PORT "
                             f"(found /{rest[1][0]})")
    host = str(host)
    if protocol in ("ip4", "ip6"):
        host = str(ipaddress.ip_address(host))
    else:
        host = host.lower().rstrip(".")
        if not host:
            raise ValueError(f"invalid multiaddr {value[:80]!r}: empty name")
    return StaticPeer(protocol, host, port, value)


def _reason(exc: Exception) -> str:
    """py-multiaddr's message without the repeated input, cut to a line."""
    reason = str(exc).split(" (string:", 1)[0]
    if reason.startswith("Invalid MultiAddr") and "': " in reason:
        reason = reason.split("': ", 1)[1]
    return reason if len(reason) <= 120 else reason[:117] + "..."
