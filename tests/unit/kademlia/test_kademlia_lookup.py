"""The lookup state machine, driven over a simulated in-memory network (no sockets)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from spegel_kademlia.ids import Contact, distance
from spegel_kademlia.lookup import Lookup, QueryState
from spegel_kademlia.messages import ProviderInfo
from spegel_kademlia.table import RoutingTable

K = 20


@dataclass
class SimNode:
    contact: Contact
    table: RoutingTable
    providers: dict[bytes, list[ProviderInfo]] = field(default_factory=dict)
    alive: bool = True


class SimNetwork:
    """Nodes that each know a random sample of the others (through their k-buckets)."""

    def __init__(self, size: int, seed: int, known: int = 60) -> None:
        self.rng = random.Random(seed)
        self.nodes: dict[bytes, SimNode] = {}
        for n in range(size):
            contact = Contact(self.rng.randbytes(32), f"10.{n // 250}.{n % 250}.1", 5001)
            self.nodes[contact.node_id] = SimNode(contact, RoutingTable(contact.node_id, k=K))
        everyone = [node.contact for node in self.nodes.values()]
        for node in self.nodes.values():
            for other in self.rng.sample(everyone, known):
                node.table.add(other)
            # Everyone knows its own neighbourhood well, as after a self lookup.
            for other in sorted(everyone, key=lambda c: distance(c.node_id,
                                                                 node.contact.node_id))[1:K]:
                node.table.add(other)

    def run(self, lookup: Lookup) -> int:
        """Drive ``lookup`` to completion; returns the number of rounds."""
        rounds = 0
        while not lookup.done:
            batch = lookup.next_queries()
            if not batch:
                break
            rounds += 1
            for contact in batch:
                node = self.nodes[contact.node_id]
                if not node.alive:
                    extra = lookup.hedge(contact)
                    lookup.on_timeout(contact)
                    if extra is not None:
                        batch.append(extra)
                    continue
                closer = node.table.closest(lookup.target, K)
                lookup.on_response(contact, closer, node.providers.get(lookup.target, []))
            assert rounds < 200
        return rounds

    def true_closest(self, target: bytes, n: int = K, alive_only: bool = True) -> list[Contact]:
        nodes = [x.contact for x in self.nodes.values() if x.alive or not alive_only]
        return sorted(nodes, key=lambda c: distance(c.node_id, target))[:n]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_find_node_converges_on_the_true_k_closest(seed: int) -> None:
    net = SimNetwork(200, seed)
    origin = net.rng.choice(list(net.nodes.values()))
    for _ in range(10):
        target = net.rng.randbytes(32)
        lookup = Lookup(target, origin.table.closest(target, K), k=K, alpha=3,
                        own_id=origin.contact.node_id)
        net.run(lookup)
        assert lookup.done
        expected = [c for c in net.true_closest(target, K + 1)
                    if c.node_id != origin.contact.node_id][:K]
        assert lookup.result == expected
        assert lookup.queries < 80


def test_find_node_routes_around_dead_nodes() -> None:
    net = SimNetwork(200, 5)
    for node in net.rng.sample(list(net.nodes.values()), 40):
        node.alive = False
    origin = next(n for n in net.nodes.values() if n.alive)
    target = net.rng.randbytes(32)
    lookup = Lookup(target, origin.table.closest(target), own_id=origin.contact.node_id)
    net.run(lookup)
    expected = [c for c in net.true_closest(target, K + 1) if c != origin.contact][:K]
    assert lookup.result == expected


def test_get_providers_stops_early_at_count() -> None:
    net = SimNetwork(200, 7)
    key = net.rng.randbytes(32)
    holders = [ProviderInfo(net.rng.randbytes(32), f"10.9.0.{n}", 5000) for n in range(1, 6)]
    for node in net.true_closest(key):
        net.nodes[node.node_id].providers[key] = holders
    origin = net.nodes[net.true_closest(key, 200)[-1].node_id]  # as far as possible
    lookup = Lookup(key, origin.table.closest(key), own_id=origin.contact.node_id, count=3)
    net.run(lookup)
    assert lookup.done
    assert lookup.providers == holders  # one answer carried them all
    assert lookup.queries <= 3 * 4


def test_get_providers_for_unknown_key_converges_with_none() -> None:
    net = SimNetwork(200, 8)
    origin = next(iter(net.nodes.values()))
    key = net.rng.randbytes(32)
    lookup = Lookup(key, origin.table.closest(key), own_id=origin.contact.node_id, count=3)
    net.run(lookup)
    assert lookup.done and lookup.providers == []


def test_own_and_ignored_providers_do_not_count() -> None:
    own = b"\x00" * 32
    a = Contact(b"\x01" * 32, "10.0.0.1", 1)
    lookup = Lookup(b"\x02" * 32, [a], own_id=own, count=1, ignore_providers=[b"\x09" * 32])
    assert lookup.next_queries() == [a]
    new = lookup.on_response(a, [Contact(own, "10.0.0.2", 1)], [
        ProviderInfo(own, "10.0.0.2", 5000), ProviderInfo(b"\x09" * 32, "10.0.0.9", 5000)])
    assert new == [] and not lookup.providers
    assert lookup.state(own) is None  # never a contact either
    assert lookup.done  # nobody left to ask


def test_alpha_limits_parallelism_and_hedge_releases_a_slot() -> None:
    seeds = [Contact(bytes([n]) * 32, f"10.0.0.{n}", 1) for n in range(1, 8)]
    lookup = Lookup(bytes(32), seeds, alpha=3)
    first = lookup.next_queries()
    assert first == seeds[:3]
    assert lookup.next_queries() == []
    extra = lookup.hedge(first[0])
    assert extra == seeds[3]
    assert lookup.state(first[0].node_id) is QueryState.LATE
    assert lookup.next_queries() == []  # the hedge took the freed slot
    assert lookup.outstanding == 4
    lookup.on_response(first[0])  # a late answer still counts
    assert lookup.state(first[0].node_id) is QueryState.RESPONDED
    lookup.on_timeout(first[1])
    assert lookup.next_queries() == [seeds[4]]


def test_not_done_while_a_close_contact_is_outstanding() -> None:
    a = Contact(b"\x01" * 32, "10.0.0.1", 1)
    b = Contact(b"\x02" * 32, "10.0.0.2", 1)
    lookup = Lookup(bytes(32), [a, b], alpha=1)
    assert lookup.next_queries() == [a]
    assert not lookup.done
    lookup.on_response(a)
    assert lookup.next_queries() == [b]
    lookup.on_timeout(b)
    assert lookup.done and lookup.result == [a]
    assert lookup.next_queries() == [] and lookup.hedge() is None


def test_empty_lookup_is_done_at_once() -> None:
    lookup = Lookup(bytes(32), [])
    assert lookup.done and lookup.next_queries() == [] and lookup.result == []


def test_late_contacts_are_skipped_only_once_k_others_answered() -> None:
    seeds = [Contact(bytes([n]) * 32, f"10.0.0.{n}", 1) for n in range(1, 5)]
    lookup = Lookup(bytes(32), seeds, k=2, alpha=1)
    [first] = lookup.next_queries()
    assert lookup.hedge(first) == seeds[1]
    lookup.on_response(seeds[1])
    assert not lookup.done  # only one answer in the window of two
    assert lookup.next_queries() == [seeds[2]]
    lookup.on_response(seeds[2])
    assert lookup.done and lookup.result == [seeds[1], seeds[2]]
    # The late one answers after all: it counts and takes its place again.
    lookup.on_response(first)
    assert lookup.result == [seeds[0], seeds[1]]


def test_all_late_and_nobody_left_waits_for_them() -> None:
    a = Contact(b"\x01" * 32, "10.0.0.1", 1)
    lookup = Lookup(bytes(32), [a], k=3)
    assert lookup.next_queries() == [a]
    assert lookup.hedge(a) is None
    assert not lookup.done  # a slow network is not a dead one
    lookup.on_timeout(a)
    assert lookup.done and lookup.result == []


@pytest.mark.parametrize("seed", range(4))
def test_outstanding_counts_every_in_flight_and_late_contact(seed: int) -> None:
    # The lookup keeps its in-flight and late counts as states change (instead of
    # counting states each time): random answers, timeouts and hedges must agree
    # with a recount, and nothing may stay outstanding at the end.
    rng = random.Random(seed)
    net = SimNetwork(150, seed)
    start = rng.choice(list(net.nodes.values()))
    lookup = Lookup(rng.randbytes(32), start.table.closest(rng.randbytes(32), K), k=8,
                    alpha=3, own_id=start.contact.node_id)
    flying: list[Contact] = []
    for _ in range(400):
        flying += lookup.next_queries()
        if not flying:
            break
        contact = flying.pop(rng.randrange(len(flying)))
        action = rng.random()
        if action < 0.15:
            extra = lookup.hedge(contact)
            flying.append(contact)  # still awaited
            if extra is not None:
                flying.append(extra)
        elif action < 0.3:
            lookup.on_timeout(contact)
        else:
            lookup.on_response(contact, net.nodes[contact.node_id].table.closest(lookup.target))
        recount = sum(lookup.state(c.node_id) in (QueryState.IN_FLIGHT, QueryState.LATE)
                      for c in net.true_closest(lookup.target, 150, alive_only=False))
        assert lookup.outstanding == recount
    assert lookup.outstanding == 0 and not flying
    assert lookup.done
