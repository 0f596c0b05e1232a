"""Where provider records live, over real UDP on 127.0.0.1 (issue 14).

The three-node case of the issue, at the router level: B announces while the network is
only {A}, so its record lives on A alone; C joins through A; A goes away. B still names
itself for what it holds, so C finds B.
"""

from __future__ import annotations

from spegel_core.protocols import Peer, PeerAddress
from spegel_core.testing.fakes import StaticListDiscovery
from spegel_core.testing.waiting import eventually as wait_for
from spegel_kademlia import KademliaRouter, KademliaSettings
from spegel_kademlia.ids import key_id

LOOPBACK = "127.0.0.1"
KEY = "sha256:" + "7" * 64


def make_node(mirror_port: int, *seeds: KademliaRouter) -> KademliaRouter:
    discovery = StaticListDiscovery([PeerAddress(*s.bound) for s in seeds if s.bound])
    return KademliaRouter(host=LOOPBACK, port=0, mirror_port=mirror_port,
                          discovery=[discovery],
                          # every node here is on 127.0.0.1: lift the 2-ids-per-IP rule
                          settings=KademliaSettings(kademlia_max_per_ip=0))


async def test_a_provider_names_itself_when_its_records_are_gone() -> None:
    a = make_node(21001)
    await a.start()
    b = make_node(21002, a)
    c = make_node(21003, a)
    try:
        await b.start()
        await wait_for(lambda: a.node_id in b.table and b.node_id in a.table)
        await b.advertise([KEY])
        assert b.status().extra["provides"] == 1
        # B's only record is on A: B knew nobody else when it announced.
        assert [r.node_id for r in a.providers.get(key_id(KEY))] == [b.node_id]
        assert len(b.providers) == 0
        await c.start()
        await wait_for(lambda: a.node_id in c.table and b.node_id in c.table)
        assert len(c.providers) == 0  # (no replication to C: only the self-naming counts)
        await a.aclose()  # its records of B go with it
        peers = [peer async for peer in c.lookup(KEY, 3, 1.0)]
        assert Peer(LOOPBACK, 21002, b.node_id) in peers
        assert a.node_id not in {p.node_id for p in peers}
        # A node never yields itself to its own mirror.
        assert [peer async for peer in b.lookup(KEY, 3, 1.0)] == []
        # Once withdrawn, B no longer names itself.
        await b.withdraw([KEY])
        assert [peer async for peer in c.lookup(KEY, 3, 1.0)] == []
    finally:
        for node in (a, b, c):
            await node.aclose()


async def test_a_key_is_announced_again_as_the_network_grows() -> None:
    first = make_node(22000)
    await first.start()
    provider = make_node(22001, first)
    later: list[KademliaRouter] = []
    try:
        await provider.start()
        await wait_for(lambda: first.node_id in provider.table)
        await provider.advertise([KEY])
        assert provider.status().extra["provides"] == 1  # on {first}, a network of 2
        for n in range(6):
            node = make_node(22002 + n, first)
            later.append(node)
            await node.start()
        # The provider's table grows past twice the size it announced at: the key is
        # announced again, to the nodes closest to it now.
        await wait_for(lambda: provider.status().extra["reannounced_keys"] >= 1)
        await wait_for(lambda: provider.status().extra["provides"] >= 2)
        holders = [n for n in later if n.providers.get(key_id(KEY))]
        assert holders, "the re-announcement reached none of the newcomers"
        await first.aclose()
        asker = later[-1]
        peers = [peer async for peer in asker.lookup(KEY, 3, 1.0)]
        assert Peer(LOOPBACK, 22001, provider.node_id) in peers
    finally:
        for node in (first, provider, *later):
            await node.aclose()


async def test_reannouncing_can_be_switched_off() -> None:
    node = KademliaRouter(host=LOOPBACK, port=0, mirror_port=22100,
                          settings=KademliaSettings(kademlia_reannounce_growth=0))
    assert node.growth is None
    async with node:
        await node.advertise([KEY])
        assert node.status().extra["reannounced_keys"] == 0
