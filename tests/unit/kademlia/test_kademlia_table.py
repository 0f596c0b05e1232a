"""The routing table: buckets, LRU order, ping-before-evict, replacements."""

from __future__ import annotations

import random

import pytest

from spegel_kademlia.ids import Contact, bucket_index, distance, random_id_in_bucket
from spegel_kademlia.table import RoutingTable

OWN = bytes(32)


def contact_in(index: int, n: int = 0) -> Contact:
    return Contact(random_id_in_bucket(OWN, index), f"10.0.{index}.{n + 1}", 5001)


def full_bucket(table: RoutingTable, index: int) -> list[Contact]:
    members = [contact_in(index, n) for n in range(table.k)]
    for member in members:
        assert table.add(member) is None
    return members


def test_add_places_contacts_by_distance_and_ignores_self() -> None:
    table = RoutingTable(OWN, k=4)
    assert table.add(Contact(OWN, "10.0.0.1", 1)) is None
    assert len(table) == 0
    c = contact_in(200)
    table.add(c)
    assert table.bucket(200) == [c]
    assert c.node_id in table and table.get(c.node_id) == c
    assert len(table) == 1 and table.nonempty_buckets == 1


def test_seen_again_moves_to_tail_and_prefers_the_new_address() -> None:
    table = RoutingTable(OWN, k=4)
    members = full_bucket(table, 255)
    moved = Contact(members[0].node_id, "10.9.9.9", 7000)
    assert table.add(moved) is None
    # One contact, the address just heard from first, the old one kept as a fallback.
    merged = Contact(moved.node_id, "10.9.9.9", 7000, (members[0].address,))
    assert table.bucket(255) == [*members[1:], merged]


def test_full_bucket_asks_to_ping_the_least_recently_seen() -> None:
    table = RoutingTable(OWN, k=3, max_failures=2)
    members = full_bucket(table, 255)
    newcomer = contact_in(255, 50)
    assert table.add(newcomer) == members[0]
    assert newcomer.node_id not in table
    assert table.replacement_cache(255) == [newcomer]
    # The head answered the ping: it stays, moves to the tail; the newcomer waits.
    table.add(members[0])
    assert table.bucket(255) == [members[1], members[2], members[0]]
    # The new head fails twice: evicted, the newcomer takes its place.
    assert table.add(newcomer) == members[1]
    assert table.mark_failed(members[1].node_id) is False
    assert table.failures(members[1].node_id) == 1
    assert table.mark_failed(members[1].node_id) is True
    assert members[1].node_id not in table
    assert newcomer.node_id in table and len(table) == 3
    assert table.replacement_cache(255) == []


def test_success_resets_failures() -> None:
    table = RoutingTable(OWN, k=3, max_failures=2)
    c = contact_in(10)
    table.add(c)
    table.mark_failed(c.node_id)
    table.add(c)
    assert table.failures(c.node_id) == 0
    assert table.mark_failed(c.node_id) is False


def test_remove_promotes_most_recent_replacement_and_caches_are_bounded() -> None:
    table = RoutingTable(OWN, k=2, replacements=2)
    members = full_bucket(table, 255)
    spares = [contact_in(255, 10 + n) for n in range(3)]
    for spare in spares:
        table.add(spare)
    assert table.replacement_cache(255) == spares[1:]
    assert table.remove(members[0].node_id)
    assert set(table.bucket(255)) == {members[1], spares[2]}
    assert not table.remove(members[0].node_id)
    assert table.mark_failed(spares[1].node_id) is False  # failed spare leaves the cache
    assert table.replacement_cache(255) == []


def test_closest_is_sorted_by_xor_distance() -> None:
    rng = random.Random(1)
    table = RoutingTable(OWN, k=20)
    for _ in range(500):
        table.add(Contact(rng.randbytes(32), "10.0.0.1", 5001))
    everyone = list(table)
    target = rng.randbytes(32)
    expected = sorted(everyone, key=lambda c: distance(c.node_id, target))[:7]
    assert table.closest(target, 7) == expected
    assert len(table.closest(target)) == 20
    assert expected[0] not in table.closest(target, 7, exclude=expected[0].node_id)
    # Each bucket is capped at k; far buckets are full, near ones hold what exists.
    assert all(len(table.bucket(i)) <= 20 for i in range(256))
    assert len(table.bucket(255)) == 20
    assert len(table) == sum(len(table.bucket(i)) for i in range(256))


@pytest.mark.parametrize("seed", range(5))
def test_closest_walks_buckets_like_a_full_sort(seed: int) -> None:
    # closest() visits buckets in distance order and sorts only those it needs; it
    # must agree with sorting everything, for targets in every kind of bucket (whose
    # distance bits pick the order of the buckets below theirs), the own id, any n,
    # excludes.
    rng = random.Random(seed)
    own = rng.randbytes(32)
    table = RoutingTable(own, k=8)
    for _ in range(400):
        table.add(Contact(rng.randbytes(32), "10.0.0.1", 5001))
    for index in (250, 253, 254):  # near buckets hold a few contacts
        for n in range(3):
            table.add(Contact(random_id_in_bucket(own, index), f"10.0.1.{n + 1}", 5001))
    everyone = list(table)
    targets = [own, rng.randbytes(32)] + [random_id_in_bucket(own, i)
                                         for i in (0, 5, 200, 249, 251, 253, 254, 255)]
    targets += [rng.randbytes(32) for _ in range(20)]
    for target in targets:
        ranked = sorted(everyone, key=lambda c: distance(c.node_id, target))
        for n in (1, 3, 8, 20, 60, len(everyone) + 5):
            assert table.closest(target, n) == ranked[:n]
        excluded = ranked[1].node_id
        assert table.closest(target, 10, exclude=excluded) == [
            c for c in ranked if c.node_id != excluded][:10]
    assert table.closest(own, 0) == []


def test_stagger_refresh_spreads_due_times_over_the_interval() -> None:
    now = [1000.0]
    table = RoutingTable(OWN, clock=lambda: now[0])
    table.add(contact_in(250))
    rng = random.Random(4)
    table.stagger_refresh(600.0, rng.random)
    assert table.stale_buckets(600.0) == []  # none due at once
    now[0] += 300.0
    half = table.stale_buckets(600.0)
    assert 0 < len(half) < 6  # some of buckets 250..255 came due, not all
    now[0] += 300.0
    assert table.stale_buckets(600.0) == list(range(250, 256))


def test_stale_buckets_start_at_the_closest_nonempty_bucket() -> None:
    now = [0.0]
    table = RoutingTable(OWN, clock=lambda: now[0])
    assert table.stale_buckets(60) == []
    table.add(contact_in(250))
    now[0] = 100.0
    assert table.stale_buckets(60) == list(range(250, 256))
    table.touch_bucket(random_id_in_bucket(OWN, 252))
    assert 252 not in table.stale_buckets(60)


@pytest.mark.parametrize(("k", "max_failures"), [(0, 3), (20, 0)])
def test_invalid_parameters(k: int, max_failures: int) -> None:
    with pytest.raises(ValueError):
        RoutingTable(OWN, k=k, max_failures=max_failures)


def test_bucket_index_agrees_with_table() -> None:
    c = contact_in(17)
    table = RoutingTable(OWN)
    table.add(c)
    assert table.bucket(bucket_index(OWN, c.node_id)) == [c]
