"""Records follow a growing network: the size estimate and the re-announce rule."""

from __future__ import annotations

import hashlib
import random

import pytest

from spegel_kademlia.ids import Contact
from spegel_kademlia.replicate import GrowthWatch, estimate_size
from spegel_kademlia.table import RoutingTable

K = 20


def ids(n: int, seed: int = 0) -> list[bytes]:
    return [hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(n)]


def closest(target: bytes, among: list[bytes], k: int = K) -> list[bytes]:
    t = int.from_bytes(target, "big")
    return sorted(among, key=lambda i: int.from_bytes(i, "big") ^ t)[:k]


def test_a_small_table_knows_the_network() -> None:
    own, *others = ids(6)
    contacts = [Contact(i, "127.0.0.1", 5001) for i in others]
    assert estimate_size(own, contacts, known=5, k=K) == 6.0
    assert estimate_size(own, [], known=0, k=K) == 1.0


@pytest.mark.parametrize("n", [200, 1000, 20_000])
def test_the_size_comes_from_the_distances_of_the_closest(n: int) -> None:
    everyone = ids(n, seed=n)
    errors = []
    for own in everyone[:20]:
        table = RoutingTable(own, k=K)
        for other in everyone:
            table.add(Contact(other, "127.0.0.1", 5001))
        size = estimate_size(own, table.closest(own, K), known=len(table), k=K)
        assert size >= len(table) + 1
        errors.append(size / n)
    errors.sort()
    assert 0.8 < errors[len(errors) // 2] < 1.25  # the median node is close
    assert all(0.45 < e < 2.2 for e in errors)  # and none is far off


def test_a_key_is_due_once_the_network_has_grown_by_the_factor() -> None:
    watch = GrowthWatch(2.0)
    watch.announced("a", 10.0)
    watch.announced("b", 40.0)
    assert watch.next_size() == 20.0 and len(watch) == 2
    assert watch.due(19.9) == []
    assert watch.due(25.0) == ["a"]
    assert watch.due(25.0) == []  # forgotten until announced again
    watch.announced("a", 25.0)
    watch.forget("b")
    assert watch.next_size() == 50.0
    assert watch.due(1000.0) == ["a"] and watch.triggered == 2
    assert watch.next_size() is None and len(watch) == 0


def test_announcing_again_replaces_the_old_size() -> None:
    watch = GrowthWatch(2.0)
    for size in range(1, 200):
        watch.announced("a", float(size))  # many announcements keep one entry live
    assert watch.due(397.0) == []
    assert watch.due(398.0) == ["a"]
    assert watch.due(10_000.0) == []


def test_factor_must_be_a_real_growth() -> None:
    with pytest.raises(ValueError, match="factor"):
        GrowthWatch(1.0)


def _rollout(n: int, factor: float | None, rng: random.Random) -> tuple[int, int]:
    """Nodes join one by one; each announces one key to the k closest nodes of the
    network as it is, and again when the network has grown ``factor`` times. The
    lookups at the end ask the k closest of the whole network. Returns (found, keys)."""
    nodes = ids(n, seed=rng.randrange(1 << 30))
    keys = [hashlib.sha256(b"key" + i).digest() for i in nodes]
    holders: dict[int, set[bytes]] = {}
    watches: list[GrowthWatch] = []
    for joined in range(1, n + 1):
        current = nodes[:joined]
        if factor is not None:
            for owner, watch in enumerate(watches):
                for _ in watch.due(float(joined)):
                    holders[owner] |= set(closest(keys[owner], current))
                    watch.announced("k", float(joined))
        holders[joined - 1] = set(closest(keys[joined - 1], current))
        if factor is not None:
            watches.append(GrowthWatch(factor))
            watches[-1].announced("k", float(joined))
    found = sum(bool(holders[i] & set(closest(keys[i], nodes))) for i in range(n))
    return found, n


def test_records_follow_the_network_only_with_reannouncing() -> None:
    rng = random.Random(14)
    found, keys = _rollout(400, 2.0, rng)
    assert found == keys
    stranded, keys = _rollout(400, None, rng)
    assert stranded < keys - 20  # the first nodes' keys are lost without it


def test_the_setting_is_off_or_a_real_growth() -> None:
    from pydantic import ValidationError

    from spegel_kademlia import KademliaSettings

    assert KademliaSettings(kademlia_reannounce_growth=0).kademlia_reannounce_growth == 0
    assert KademliaSettings().kademlia_reannounce_growth == 2.0
    with pytest.raises(ValidationError, match="too small a growth"):
        KademliaSettings(kademlia_reannounce_growth=1.05)
