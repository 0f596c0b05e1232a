"""The rendezvous' claim book: go, breadth-first parents, fan-out, soft state."""

from __future__ import annotations

import math

from spegel_core.protocols import Peer
from spegel_core.rendezvous import ClaimBook

KEY = b"k" * 32


def peer(i: int) -> Peer:
    return Peer(f"127.0.1.{i}", 5000, bytes([i]) * 32)


def test_first_claimant_goes_later_ones_get_a_parent() -> None:
    book = ClaimBook()
    first = book.claim(KEY, peer(1), fanout=4, ttl=10, now=0)
    assert first.go and first.parent is None and first.fetcher == peer(1)
    second = book.claim(KEY, peer(2), fanout=4, ttl=10, now=0)
    assert not second.go and second.parent == peer(1) and second.fetcher == peer(1)
    assert second.depth == 1
    assert book.granted == 1 and book.joined == 1


def test_no_parent_feeds_more_than_fanout_and_the_tree_is_shallow() -> None:
    book = ClaimBook()
    fanout, count = 4, 1000
    answers = [book.claim(KEY, Peer("h", i + 1, (i + 1).to_bytes(32, "big")),
                          fanout=fanout, ttl=10, now=0) for i in range(count)]
    assert sum(a.go for a in answers) == 1
    children: dict[Peer, int] = {}
    for answer in answers:
        if answer.parent is not None:
            children[answer.parent] = children.get(answer.parent, 0) + 1
    assert max(children.values()) <= fanout
    depth = max(a.depth for a in answers)
    assert depth <= math.ceil(math.log(count, fanout)) + 1
    flight = book.flights[KEY]
    assert flight.max_children <= fanout and flight.depth == depth


def test_a_claim_again_is_a_renewal_with_the_same_answer() -> None:
    book = ClaimBook()
    book.claim(KEY, peer(1), fanout=1, ttl=10, now=0)
    first = book.claim(KEY, peer(2), fanout=1, ttl=10, now=0)
    again = book.claim(KEY, peer(2), fanout=1, ttl=10, now=5)
    assert again == first
    assert book.flights[KEY].members[peer(2).node_id].expires == 15


def test_an_expired_fetcher_ends_the_flight() -> None:
    book = ClaimBook()
    book.claim(KEY, peer(1), fanout=4, ttl=10, now=0)
    book.claim(KEY, peer(2), fanout=4, ttl=10, now=0)
    book.claim(KEY, peer(2), fanout=4, ttl=10, now=9)  # renewed, the fetcher was not
    answer = book.claim(KEY, peer(3), fanout=4, ttl=10, now=11)
    assert answer.go and answer.fetcher == peer(3)


def test_an_expired_parent_is_skipped_for_new_children() -> None:
    book = ClaimBook()
    book.claim(KEY, peer(1), fanout=1, ttl=10, now=0)
    book.claim(KEY, peer(2), fanout=1, ttl=10, now=0)  # child of 1
    book.claim(KEY, peer(1), fanout=1, ttl=10, now=8)  # the fetcher renews; 2 does not
    answer = book.claim(KEY, peer(3), fanout=1, ttl=10, now=12)
    assert not answer.go and answer.parent == peer(1)  # 2 is gone: the root takes it


def test_release_by_the_fetcher_ends_the_flight_and_by_a_child_frees_room() -> None:
    book = ClaimBook()
    book.claim(KEY, peer(1), fanout=1, ttl=10, now=0)
    book.claim(KEY, peer(2), fanout=1, ttl=10, now=0)
    book.release(KEY, peer(2))
    assert book.claim(KEY, peer(3), fanout=1, ttl=10, now=0).parent == peer(1)
    book.release(KEY, peer(1))
    assert book.claim(KEY, peer(4), fanout=1, ttl=10, now=0).go


def test_bounded_flights_and_members() -> None:
    book = ClaimBook(max_flights=2, max_members=2)
    for i in range(5):
        book.claim(bytes([i]) * 32, peer(1), fanout=4, ttl=10, now=0)
    assert len(book) == 2
    book.claim(KEY, peer(1), fanout=4, ttl=10, now=0)
    book.claim(KEY, peer(2), fanout=4, ttl=10, now=0)
    over = book.claim(KEY, peer(3), fanout=4, ttl=10, now=0)
    assert over.go and over.fetcher == peer(3)  # full: go upstream, as without single flight


def test_snapshot_lists_live_flights() -> None:
    book = ClaimBook()
    book.claim(KEY, peer(1), fanout=4, ttl=10, now=0)
    book.claim(KEY, peer(2), fanout=4, ttl=10, now=0)
    (flight,) = book.snapshot(now=1)
    assert flight["members"] == 2 and flight["depth"] == 1
    assert book.snapshot(now=11) == []
