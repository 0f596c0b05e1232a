"""Bootstrapping: addresses from discovery, names resolved, when to ask again.

Addresses come from every discovery source; :class:`BootstrapSchedule` says when
discovery is asked again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence

from spegel_core.protocols import Discovery, PeerAddress
from spegel_kademlia.rpc import is_ip, normalize_host

log = logging.getLogger(__name__)

#: First wait after a failed attempt (doubling up to ``backoff_max``).
BACKOFF_MIN = 0.25


class BootstrapSchedule:
    """When to ask discovery again, after each bootstrap attempt (pure: no I/O, no clock).

    - An attempt that found nobody: again after a backoff that doubles, from
      :data:`BACKOFF_MIN` up to ``backoff_max``, each wait drawn from its upper half.
    - Joined, but knowing fewer than ``k`` nodes: the cluster may still be starting (the
      first nodes of a rollout see a DNS answer of a few addresses). Again soon, with the
      same backoff, for as long as each attempt finds the table grown and discovery names
      nodes it did not know; in a small cluster that stops after one more question.
    - Otherwise: again after ``rebootstrap`` seconds, and the backoff starts over.

    :param uniform: ``random.Random.uniform`` (tests pass a seeded one).
    """

    def __init__(self, *, k: int, backoff_max: float, rebootstrap: float,
                 uniform: Callable[[float, float], float]) -> None:
        self.k = k
        self.backoff_max = backoff_max
        self.rebootstrap = rebootstrap
        self._uniform = uniform
        self._backoff = BACKOFF_MIN
        self._grown_to = 0  # table size after the last attempt that found it small

    def after(self, ok: bool, size: int, seeds_were_new: bool) -> float:
        """Seconds to wait after a bootstrap attempt.

        :param ok: whether the attempt joined.
        :param size: contacts in the table after it.
        :param seeds_were_new: whether the seeds named nodes not known before.
        :returns: the wait in seconds.
        """
        if ok and not (self._grown_to < size < self.k and seeds_were_new):
            self._backoff = BACKOFF_MIN
            return self.rebootstrap
        if ok:
            self._grown_to = size
        wait = self._backoff * self._uniform(0.5, 1.0)
        self._backoff = min(self._backoff * 2, self.backoff_max)
        return wait


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
