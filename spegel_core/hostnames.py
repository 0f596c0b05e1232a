"""Host names, DNS names and name-server addresses: checks and one canonical spelling.

Public core helpers shared by discovery plugins (``spegel_dns``, ``spegel_static``)
and available to third-party ones, so that no plugin imports another.
"""

from __future__ import annotations

import functools
import ipaddress
import re

__all__ = ["canonical_host", "check_dns_name", "parse_nameserver"]

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_dns_name(value: str) -> str:
    """Return ``value`` lower-cased without a trailing dot, or raise ``ValueError``.

    Labels of 1-63 letters, digits, ``-`` and ``_`` (``_`` for SRV names such as
    ``_router._udp.spegel``), not starting or ending with ``-``; 253 characters at
    most. An IP address is refused: it is not a name to look up.
    """
    name = value.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("a DNS name cannot be empty")
    if len(name) > 253:
        raise ValueError(f"DNS name {value[:40]!r}... is longer than 253 characters")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"invalid DNS name {value[:80]!r} (bad label {label[:63]!r})")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise ValueError(f"{value!r} is an IP address, not a DNS name")
    if name.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"invalid DNS name {value[:80]!r} (the last label is a number)")
    return name


def parse_nameserver(value: str) -> str:
    """``HOST``, ``HOST:PORT``, ``[IPV6]:PORT`` or ``IPV6`` -> the c-ares form.

    The host must be an IPv4 or IPv6 literal. Returns ``"1.2.3.4:53"`` or
    ``"[::1]:53"``: c-ares accepts exactly these.
    """
    text = value.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid name server {value!r} (expected [IPV6]:PORT)")
        if rest:
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, value)
    else:
        host = text  # IPv4 alone, or IPv6 alone (several colons)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"invalid name server {value!r} (expected an IP address, HOST:PORT or [IPV6]:PORT)"
        ) from None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port in name server {value!r}")
    return int(text)


@functools.lru_cache(maxsize=16384)  # the addresses of one cluster, asked again and again
def canonical_host(host: str) -> str:
    """An IP address in one spelling (IPv4-mapped IPv6 as IPv4); names lower-cased."""
    text = host.strip().strip("[]")
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text.lower().rstrip(".")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
