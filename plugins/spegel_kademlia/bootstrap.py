"""Bootstrap addresses: collected from every discovery source, names resolved."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from spegel_core.protocols import Discovery, PeerAddress
from spegel_kademlia.rpc import is_ip, normalize_host

log = logging.getLogger(__name__)


async def bootstrap_addresses(sources: Sequence[Discovery], *,
                              per_source_timeout: float) -> list[PeerAddress]:
    """Every source's addresses, deduplicated; a slow or failing source is skipped."""
    found: dict[PeerAddress, None] = {}
    for source in sources:
        try:
            async with asyncio.timeout(per_source_timeout):
                peers = await source.bootstrap_peers()
        except TimeoutError:
            log.warning("bootstrap source %s timed out", source.name)
            continue
        except Exception:  # a third-party source's bug must not stop bootstrapping
            log.exception("bootstrap source %s failed", source.name)
            continue
        found.update(dict.fromkeys(peers))
    return list(found)


async def resolve(address: PeerAddress, family: int) -> tuple[str, int] | None:
    """``(ip, port)`` of a bootstrap address; names are resolved without blocking."""
    host = normalize_host(address.host)
    if is_ip(host):
        return host, address.port
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, address.port, family=family, type=socket.SOCK_DGRAM)
    except OSError as exc:
        log.debug("cannot resolve bootstrap host %s: %s", host, exc)
        return None
    return (str(infos[0][4][0]), address.port) if infos else None
