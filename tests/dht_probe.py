"""Asking a running cluster's DHT from the test process, as a fresh node would."""

from __future__ import annotations

from spegel_core.testing.faults import SeedDiscovery
from spegel_core.testing.nodes import NodeProcess
from spegel_core.testing.waiting import eventually
from spegel_kademlia import KademliaRouter, KademliaSettings


async def providers_of(key: str, seed: NodeProcess) -> set[str]:
    """The mirror addresses (``host:port``) a fresh DHT node in this process finds for ``key``.

    :param key: the key to look up (a digest or a reference key).
    :param seed: the node process the fresh node bootstraps from.
    :returns: the providers' mirror addresses.
    """
    router = KademliaRouter(host="127.0.0.1", port=0, mirror_port=1,
                            discovery=[SeedDiscovery([(seed.ip, seed.port + 1)])],
                            settings=KademliaSettings(kademlia_bootstrap_backoff_max=0.2))
    async with router:
        await eventually(lambda: len(router.table) > 0, 20, "no DHT contact in 20 s")
        # The lookup ends once the closest nodes answered; 10 s is its deadline only.
        return {f"{peer.host}:{peer.port}" async for peer in router.lookup(key, 10, 10.0)}
