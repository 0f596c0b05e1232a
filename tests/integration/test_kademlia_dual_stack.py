"""A DHT node reached at two addresses (127.0.0.x and ::1), over real UDP sockets.

One node heard from at its IPv4 and its IPv6 address is one contact with both; answers
carry both; a node that reaches only one family uses that one; a lookup whose first
address of a contact is dead falls back to the next. The open DHT (no cluster key), so
every address enters a routing table only once a round trip proved it.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from spegel_core.protocols import PeerAddress
from spegel_core.testing.fakes import StaticListDiscovery
from spegel_core.testing.waiting import eventually as wait_for
from spegel_kademlia import KademliaRouter, KademliaSettings
from spegel_kademlia.ids import Contact, key_id, random_id
from spegel_kademlia.lookup import Lookup, QueryState
from spegel_kademlia.messages import FindNode, GetProviders, Nodes, Ping, Providers

KEY = "sha256:" + "6" * 64


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


def StaticDiscovery(*seeds: PeerAddress) -> StaticListDiscovery:
    return StaticListDiscovery(seeds, refresh_interval=600.0)


# Quiet nodes: no bucket refresh during a test (it would reorder addresses by traffic).
SETTINGS = KademliaSettings(kademlia_refresh_interval=3600.0, kademlia_rpc_timeout=0.2)


def _v4_loopback() -> str:
    return f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"


def rpc_timeouts(router: KademliaRouter) -> int:
    return int(router.status().extra["rpc_timeouts"])  # type: ignore[call-overload]


def addresses_of(router: KademliaRouter, node_id: bytes) -> tuple[tuple[str, int], ...]:
    contact = router.table.get(node_id)
    return () if contact is None else contact.addresses


@pytest.fixture
async def routers() -> AsyncIterator[list[KademliaRouter]]:
    made: list[KademliaRouter] = []
    yield made
    for router in made:
        await router.aclose()


async def start(routers: list[KademliaRouter], host: str, *seeds: PeerAddress,
                node_id: bytes | None = None, mirror_port: int = 5000) -> KademliaRouter:
    router = KademliaRouter(host=host, port=0, mirror_port=mirror_port,
                            discovery=[StaticDiscovery(*seeds)], settings=SETTINGS,
                            node_id=node_id)
    routers.append(router)
    await router.start()
    return router


async def test_a_dual_stack_node_is_one_contact_and_answers_carry_both_addresses(
        routers: list[KademliaRouter]) -> None:
    a = await start(routers, "::", mirror_port=5101)  # one dual-stack socket
    assert a.bound is not None
    port = a.bound[1]
    # B is told both of A's addresses, as a headless Service's A and AAAA records would.
    b = await start(routers, "::", PeerAddress("127.0.0.1", port), PeerAddress("::1", port))
    both = {("127.0.0.1", port), ("::1", port)}
    await wait_for(lambda: set(addresses_of(b, a.node_id)) == both)
    assert len(b.table) == 1  # one row for A, not two fighting over its id

    assert b.bound is not None
    b_port = b.bound[1]
    # C reaches IPv4 only: it is told of A by B, and asks A at A's IPv4 address.
    c = await start(routers, _v4_loopback(), PeerAddress("127.0.0.1", b_port))
    await wait_for(lambda: addresses_of(c, a.node_id) == (("127.0.0.1", port),))
    # B's NODES answer names A at both addresses.
    reply = await c.ask(("127.0.0.1", b_port), FindNode(a.node_id),
                        attempt_timeout=1.0, retries=2, node_id=b.node_id)
    assert isinstance(reply.body, Nodes)
    named = {entry.node_id: entry for entry in reply.body.contacts}
    assert set(named[a.node_id].addresses) == both

    # A provider record of A at B (under the source address of A's ADD_PROVIDER) is
    # answered with both addresses: the other one is the one B proved for A's id.
    await a.advertise([KEY])
    await wait_for(lambda: bool(b.providers.get(key_id(KEY))))
    reply = await c.ask(("127.0.0.1", b_port), GetProviders(key_id(KEY), 3),
                        attempt_timeout=1.0, retries=2, node_id=b.node_id)
    assert isinstance(reply.body, Providers)
    [provider] = [p for p in reply.body.providers if p.node_id == a.node_id]
    assert set(provider.addresses) == {("127.0.0.1", 5101), ("::1", 5101)}
    # C's lookup: A is at an address C reaches, whichever answer C heard first.
    peers = [peer async for peer in c.lookup(KEY, 1, 5.0)]
    assert [(p.host, p.port, p.node_id) for p in peers] == [("127.0.0.1", 5101, a.node_id)]


async def test_a_query_falls_back_to_the_second_address_when_the_first_is_dead(
        routers: list[KademliaRouter]) -> None:
    node_id = random_id()
    # One node (one id) at two addresses: ::1 and an IPv4 loopback address.
    a6 = await start(routers, "::1", node_id=node_id)
    assert a6.bound is not None
    v6 = ("::1", a6.bound[1])
    b = await start(routers, "::", PeerAddress(*v6))
    assert b.bound is not None
    await wait_for(lambda: addresses_of(b, node_id) == (v6,))
    a4 = await start(routers, _v4_loopback(), PeerAddress("127.0.0.1", b.bound[1]),
                     node_id=node_id)
    assert a4.bound is not None
    v4 = a4.bound
    # B checked the new address with a round trip, then took it as the preferred one.
    await wait_for(lambda: addresses_of(b, node_id) == (v4, v6))
    await a4.aclose()  # its IPv4 address goes dead; B still names it first

    c = await start(routers, "::", PeerAddress("127.0.0.1", b.bound[1]))
    reply = await c.ask(("127.0.0.1", b.bound[1]), FindNode(node_id),
                        attempt_timeout=1.0, retries=2, node_id=b.node_id)
    assert isinstance(reply.body, Nodes)
    [contact] = [e for e in reply.body.contacts if e.node_id == node_id]
    assert contact.addresses == (v4, v6)
    # A FIND_NODE lookup of A that starts at B alone: B names A at the dead address
    # first; the lookup asks A there, then at ::1, and A answers.
    timeouts = rpc_timeouts(c)
    lookup = Lookup(node_id, [Contact(b.node_id, "127.0.0.1", b.bound[1])],
                    own_id=c.node_id)
    deadline = asyncio.get_running_loop().time() + 10.0
    async with aclosing(c._drive(lookup, FindNode(node_id), deadline)) as steps:
        async for _ in steps:
            pass
    assert lookup.state(node_id) is QueryState.RESPONDED
    assert node_id in [found.node_id for found in lookup.result]
    assert rpc_timeouts(c) >= timeouts + 1  # the query at the dead address
    # The query itself: the answer comes from ::1.
    timeouts = rpc_timeouts(c)
    answer = await c._start_request(contact, Ping(), retries=0)
    assert (answer.sender, answer.source_host, answer.source_port) == (node_id, *v6)
    assert rpc_timeouts(c) >= timeouts + 1  # the attempt at the dead address
    assert c.table.failures(node_id) == 0  # an address timed out, not the node
    assert addresses_of(c, node_id)[0] == v6




async def test_an_empty_router_host_binds_both_families(
        routers: list[KademliaRouter]) -> None:
    """``--router-addr :PORT`` (an empty host): one socket that IPv4 and IPv6 peers reach."""
    a = await start(routers, "")
    assert a.bound is not None and a.bound[0] == "::"
    port = a.bound[1]
    v4 = await start(routers, _v4_loopback(), PeerAddress("127.0.0.1", port))
    v6 = await start(routers, "::1", PeerAddress("::1", port))
    await wait_for(lambda: {v4.node_id, v6.node_id} <= {c.node_id for c in a.table})
    assert a.table.get(v4.node_id).host.startswith("127.")  # type: ignore[union-attr]
    assert a.table.get(v6.node_id).host == "::1"  # type: ignore[union-attr]
    # Both reached A, each over its own family.
    assert addresses_of(v4, a.node_id) == (("127.0.0.1", port),)
    assert addresses_of(v6, a.node_id) == (("::1", port),)
