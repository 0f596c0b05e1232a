"""Provider records (expiry, caps) and the advertised keys' reprovide schedule."""

from __future__ import annotations

import random

from spegel_kademlia.ids import key_id
from spegel_kademlia.store import AdvertisedKeys, ProviderStore

KEY = key_id("sha256:" + "0" * 64)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def node(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_records_expire_and_are_swept() -> None:
    clock = Clock()
    store = ProviderStore(ttl=60, clock=clock)
    assert store.add(KEY, node(1), "10.0.0.1", 5000)
    assert store.add(KEY, node(2), "10.0.0.2", 5000, ttl=10)
    assert store.add(KEY, node(3), "10.0.0.3", 5000, ttl=3600)  # capped at the store's ttl
    assert [r.node_id for r in store.get(KEY)][-1] == node(2)
    clock.now += 30
    assert {r.node_id for r in store.get(KEY)} == {node(1), node(3)}
    assert len(store) == 3  # expired but not yet swept
    assert store.sweep() == 1 and len(store) == 2
    clock.now += 31
    assert store.get(KEY) == []
    assert store.sweep() == 2 and len(store) == 0 and store.keys == 0


def test_renewal_extends_and_ttl_zero_removes() -> None:
    clock = Clock()
    store = ProviderStore(ttl=60, clock=clock)
    store.add(KEY, node(1), "10.0.0.1", 5000)
    clock.now += 50
    store.add(KEY, node(1), "10.0.0.1", 5001)
    clock.now += 50
    assert [(r.node_id, r.port) for r in store.get(KEY)] == [(node(1), 5001)]
    assert store.add(KEY, node(1), "10.0.0.1", 5001, ttl=0)
    assert store.get(KEY) == [] and len(store) == 0


def test_remove_checks_host_when_given() -> None:
    store = ProviderStore()
    store.add(KEY, node(1), "10.0.0.1", 5000)
    assert not store.remove(KEY, node(1), host="10.6.6.6")
    assert store.remove(KEY, node(1), host="10.0.0.1")
    assert not store.remove(KEY, node(1))


def test_per_key_cap_evicts_the_soonest_to_expire() -> None:
    clock = Clock()
    store = ProviderStore(ttl=100, per_key=3, clock=clock)
    for n in range(3):
        store.add(KEY, node(n), "10.0.0.1", 5000, ttl=10 + n)
    assert store.add(KEY, node(9), "10.0.0.9", 5000)
    assert {r.node_id for r in store.get(KEY)} == {node(1), node(2), node(9)}
    assert not store.add(KEY, node(8), "10.0.0.8", 5000, ttl=5)  # would expire first
    assert len(store) == 3


def test_total_cap_refuses_until_records_expire() -> None:
    clock = Clock()
    store = ProviderStore(ttl=10, total=2, clock=clock)
    assert store.add(key_id("a"), node(1), "10.0.0.1", 5000)
    assert store.add(key_id("b"), node(1), "10.0.0.1", 5000)
    assert not store.add(key_id("c"), node(1), "10.0.0.1", 5000)
    assert store.add(key_id("a"), node(1), "10.0.0.1", 5000)  # renewal is always fine
    clock.now += 11
    assert store.add(key_id("c"), node(1), "10.0.0.1", 5000)
    assert len(store) == 1


def test_advertised_keys_are_due_after_interval_with_jitter() -> None:
    clock = Clock()
    keys = AdvertisedKeys(interval=900, jitter=120, rng=random.Random(7), clock=clock)
    names = [f"sha256:{n:064x}" for n in range(200)]
    assert keys.add(names) == names
    assert keys.add(names[:5]) == []
    assert len(keys) == 200 and names[0] in keys
    assert keys.take_due(1000) == []
    delay = keys.next_due_in()
    assert delay is not None and 780 <= delay <= 1020
    clock.now += 900
    due = keys.take_due(1000)
    assert 50 < len(due) < 150  # about half are due at the midpoint of the jitter
    clock.now += 120
    rest = keys.take_due(10)
    assert len(rest) == 10  # batches are bounded
    rest += keys.take_due(1000)
    assert sorted(due + rest) == sorted(names)
    assert keys.take_due(1000) == []  # each rescheduled one interval ahead


def test_advertised_keys_remove_and_reschedule() -> None:
    clock = Clock()
    keys = AdvertisedKeys(interval=900, jitter=0, clock=clock)
    keys.add(["a", "b", "c"])
    assert keys.remove(["b", "x"]) == ["b"]
    keys.reschedule("c", 5)
    keys.reschedule("x", 5)  # unknown keys are ignored
    clock.now += 5
    assert keys.take_due(10) == ["c"]
    assert keys.key_id("a") == key_id("a")
    clock.now += 900
    assert sorted(keys.take_due(10)) == ["a", "c"]
    keys.remove(["a", "c"])
    assert keys.next_due_in() is None and len(keys) == 0


def test_advertised_keys_know_their_ids() -> None:
    keys = AdvertisedKeys(interval=900, jitter=0)
    keys.add(["sha256:" + "a" * 64, "sha256:" + "b" * 64])
    kid = key_id("sha256:" + "a" * 64)
    assert kid in keys.ids and keys.key_of(kid) == "sha256:" + "a" * 64
    keys.remove(["sha256:" + "a" * 64])
    assert kid not in keys.ids and keys.key_of(kid) is None and len(keys.ids) == 1
