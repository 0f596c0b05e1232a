"""How a node answers each request (pure: table and store in, reply out)."""

from __future__ import annotations

import random

from spegel_kademlia.handlers import answer
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import (
    AddProvider,
    AddProviderAck,
    Body,
    FindNode,
    GetProviders,
    Message,
    Nodes,
    Ping,
    Pong,
    ProviderInfo,
    Providers,
)
from spegel_kademlia.store import ProviderStore
from spegel_kademlia.table import RoutingTable

OWN = bytes(32)
ASKER = b"\xaa" * 32
KEY = b"\x0f" * 32


def node(n: int) -> bytes:
    return n.to_bytes(32, "big")


def setup() -> tuple[RoutingTable, ProviderStore]:
    table = RoutingTable(OWN, k=4)
    for n in range(1, 10):
        table.add(Contact(node(n), f"10.0.0.{n}", 5001))
    table.add(Contact(ASKER, "10.0.0.99", 5001))
    return table, ProviderStore()


def ask(body: Body, table: RoutingTable, store: ProviderStore,
        sender: bytes = ASKER) -> Body | None:
    message = Message(body, 7, sender, 5000, source_host="10.0.0.99", source_port=5001)
    return answer(message, table, store, k=4, rng=random.Random(0))


def test_ping_and_find_node() -> None:
    table, store = setup()
    assert ask(Ping(), table, store) == Pong()
    reply = ask(FindNode(ASKER), table, store)
    assert isinstance(reply, Nodes)
    assert reply.contacts == tuple(table.closest(ASKER, 4, exclude=ASKER))
    assert all(c.node_id != ASKER for c in reply.contacts)


def test_add_provider_records_the_source_address_of_the_sender_only() -> None:
    table, store = setup()
    assert ask(AddProvider(KEY, ASKER, 5000, 600), table, store) == AddProviderAck(True)
    [record] = store.get(KEY)
    assert (record.node_id, record.host, record.port) == (ASKER, "10.0.0.99", 5000)
    # Nobody announces for somebody else.
    assert ask(AddProvider(KEY, node(3), 5000, 600), table, store) == AddProviderAck(False)
    assert len(store.get(KEY)) == 1
    # ttl 0 withdraws, without a reply.
    assert ask(AddProvider(KEY, ASKER, 5000, 0), table, store) is None
    assert store.get(KEY) == []


def test_get_providers_samples_up_to_wanted_and_leaves_out_the_asker() -> None:
    table, store = setup()
    for n in range(1, 9):
        store.add(KEY, node(n), f"10.1.0.{n}", 5000)
    store.add(KEY, ASKER, "10.0.0.99", 5000)
    reply = ask(GetProviders(KEY, 3), table, store)
    assert isinstance(reply, Providers)
    assert len(reply.providers) == 3
    assert all(isinstance(p, ProviderInfo) and p.node_id != ASKER for p in reply.providers)
    assert reply.contacts == tuple(table.closest(KEY, 4, exclude=ASKER))
    everyone = ask(GetProviders(KEY, 255), table, store)
    assert isinstance(everyone, Providers) and len(everyone.providers) == 8


def test_responses_get_no_reply() -> None:
    table, store = setup()
    assert ask(Pong(), table, store) is None
    assert ask(Nodes(()), table, store) is None


ME = ProviderInfo(OWN, "127.0.0.1", 5000)


def test_a_node_names_itself_first_for_a_key_it_advertises() -> None:
    table, store = setup()
    for n in range(1, 6):
        store.add(KEY, node(n), f"10.1.0.{n}", 5000)
    message = Message(GetProviders(KEY, 3), 7, ASKER, 5000, source_host="10.0.0.99",
                      source_port=5001)
    reply = answer(message, table, store, k=4, rng=random.Random(0), me=ME,
                   advertised={KEY})
    assert isinstance(reply, Providers)
    assert reply.providers[0] == ME and len(reply.providers) == 3
    assert len({p.node_id for p in reply.providers}) == 3
    # A record of its own held here (another node replicated it) is not named twice.
    store.add(KEY, OWN, "10.0.0.1", 5000)
    everyone = answer(message, table, store, k=4, rng=random.Random(0), me=ME,
                      advertised={KEY})
    assert isinstance(everyone, Providers)
    assert [p.node_id for p in everyone.providers].count(OWN) == 1


def test_a_node_does_not_name_itself_for_a_key_it_does_not_advertise() -> None:
    table, store = setup()
    other = b"\x33" * 32
    message = Message(GetProviders(other, 3), 7, ASKER, 5000, source_host="10.0.0.99",
                      source_port=5001)
    reply = answer(message, table, store, k=4, rng=random.Random(0), me=ME,
                   advertised={KEY})
    assert isinstance(reply, Providers) and reply.providers == ()
    none_wanted = answer(Message(GetProviders(KEY, 0), 7, ASKER, 5000), table, store, k=4,
                         rng=random.Random(0), me=ME, advertised={KEY})
    assert isinstance(none_wanted, Providers) and none_wanted.providers == ()
