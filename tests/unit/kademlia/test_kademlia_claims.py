"""CLAIM / CLAIM_ANSWER on the wire, and the rendezvous' answers (pure)."""

from __future__ import annotations

import pytest

from spegel_core.protocols import Peer
from spegel_core.rendezvous import ClaimBook
from spegel_kademlia.claims import HINT_TTL, Claimant, answer_claim, local_address_towards
from spegel_kademlia.codec import Codec, DecodeError, EncodeError
from spegel_kademlia.ids import Contact, key_id
from spegel_kademlia.messages import (
    Body,
    Claim,
    ClaimReply,
    Message,
    MessageType,
    Nodes,
    ProviderInfo,
)

KEY = b"cluster-key-0123456789abcdef0123"
A, B, R = b"a" * 32, b"b" * 32, b"r" * 32


def roundtrip(codec: Codec, body: Claim | ClaimReply) -> Message:
    return codec.decode(codec.encode(Message(body, 7, A, 5000)), ("127.0.0.9", 5001))


@pytest.mark.parametrize("key", [None, KEY])
def test_claims_round_trip(key: bytes | None) -> None:
    codec = Codec(key)
    claim = Claim(b"k" * 32, 4, 10_000)
    assert roundtrip(codec, claim).body == claim
    fetcher = ProviderInfo(A, "127.0.0.2", 5000)
    go = ClaimReply(True, 0, 10_000, fetcher)
    assert roundtrip(codec, go).body == go
    wait = ClaimReply(False, 3, 10_000, fetcher, ProviderInfo(B, "::1", 5002))
    message = roundtrip(codec, wait)
    assert message.body == wait and message.type is MessageType.CLAIM_ANSWER
    assert message.is_response and codec.size(Message(wait, 7, A, 5000)) == len(
        codec.encode(Message(wait, 7, A, 5000)))


def test_bad_claims_are_refused() -> None:
    codec = Codec()
    with pytest.raises(EncodeError):
        codec.encode(Message(Claim(b"k" * 32, 0, 1), 1, A, 5000))
    data = bytearray(codec.encode(Message(Claim(b"k" * 32, 4, 1), 1, A, 5000)))
    data[-5] = 0  # fanout 0
    with pytest.raises(DecodeError):
        codec.decode(bytes(data), ("127.0.0.1", 1))
    go_with_parent = bytearray(codec.encode(Message(
        ClaimReply(False, 1, 1, ProviderInfo(A, "127.0.0.2", 1), ProviderInfo(B, "127.0.0.3", 1)),
        1, A, 5000)))
    go_with_parent[47] = 1  # "go" and a parent: contradictory
    with pytest.raises(DecodeError):
        codec.decode(bytes(go_with_parent), ("127.0.0.1", 1))
    with pytest.raises(DecodeError):  # truncated
        codec.decode(bytes(go_with_parent[:-3]), ("127.0.0.1", 1))


def claim_from(sender: bytes, host: str, ttl_ms: int = 5000) -> Message:
    return Message(Claim(b"k" * 32, 2, ttl_ms), 1, sender, 5000, host, 5001)


def test_the_rendezvous_records_the_source_address() -> None:
    book = ClaimBook()
    own = Peer("127.0.0.5", 5000, R)
    first = answer_claim(claim_from(A, "127.0.0.2"), book, own, now=0)
    assert first is not None and first.go and first.fetcher.host == "127.0.0.2"
    second = answer_claim(claim_from(B, "127.0.0.3"), book, own, now=0)
    assert second is not None and not second.go
    assert second.parent == ProviderInfo(A, "127.0.0.2", 5000) and second.depth == 1
    assert answer_claim(claim_from(A, "127.0.0.2", ttl_ms=0), book, own, now=0) is None
    third = answer_claim(claim_from(B, "127.0.0.3"), book, own, now=0)
    assert third is not None and third.go  # the fetcher released: the flight ended


def test_the_rendezvous_itself_as_fetcher_is_named_by_a_reachable_address() -> None:
    book = ClaimBook()
    book.claim(b"k" * 32, Peer("", 5000, R), fanout=2, ttl=5, now=0)  # its own claim
    reply = answer_claim(claim_from(B, "127.0.0.3"), book, Peer("", 5000, R), now=0)
    assert reply is not None and reply.fetcher.host == local_address_towards("127.0.0.3")
    assert reply.fetcher.host
    assert reply.parent is not None and reply.parent.node_id == R


def test_ttl_is_capped() -> None:
    reply = answer_claim(claim_from(A, "127.0.0.2", ttl_ms=10**9), ClaimBook(),
                         Peer("127.0.0.5", 5000, R), now=0)
    assert reply is not None and reply.ttl_ms == 60_000


def test_a_node_that_knows_closer_nodes_sends_the_claim_on_unless_it_holds_the_flight() -> None:
    book = ClaimBook()
    own = Peer("127.0.0.5", 5000, R)
    closer = [Contact(b"c" * 32, "127.0.0.7", 5001)]
    reply = answer_claim(claim_from(A, "127.0.0.2"), book, own, now=0, closer=closer)
    assert reply == Nodes(tuple(closer)) and not book.flights
    book.claim(b"k" * 32, Peer("127.0.0.3", 5000, B), fanout=2, ttl=5, now=0)
    held = answer_claim(claim_from(A, "127.0.0.2"), book, own, now=0, closer=closer)
    assert isinstance(held, ClaimReply) and not held.go  # a renewal never moves a flight


class Hops:
    """A Claimant's request callable: who was asked, and the rendezvous that answers."""

    def __init__(self, rendezvous: bytes, closer: dict[bytes, list[Contact]]) -> None:
        self.rendezvous = rendezvous
        self.closer = closer
        self.asked: list[bytes] = []

    async def __call__(self, contact: Contact, body: Body,
                       timeout: float) -> Message:  # noqa: ASYNC109 (the request signature)
        self.asked.append(contact.node_id)
        reply: Body
        if contact.node_id == self.rendezvous:
            reply = ClaimReply(True, 0, 5000, ProviderInfo(A, "127.0.0.2", 5000), None)
        else:
            reply = Nodes(tuple(self.closer.get(contact.node_id, ())))
        return Message(reply, 1, contact.node_id, 5000)


def claimant_towards(kid: bytes, now: list[float]) -> tuple[Claimant, Hops, list[Contact]]:
    """A claimant far from ``kid`` whose table knows only a far node; the route from it
    is far -> middle -> rendezvous (the rendezvous is the closest of the three)."""
    rendezvous = Contact(bytes([kid[0]]) + bytes(x ^ 1 for x in kid[1:2]) + kid[2:],
                         "127.0.0.4", 5001)
    middle = Contact(bytes([kid[0] ^ 0x01]) + kid[1:], "127.0.0.5", 5001)
    far = Contact(bytes([kid[0] ^ 0x10]) + kid[1:], "127.0.0.6", 5001)
    hops = Hops(rendezvous.node_id, {far.node_id: [middle], middle.node_id: [rendezvous]})
    claimant = Claimant(node_id=bytes([kid[0] ^ 0x80]) + kid[1:], mirror_port=5000,
                        host="127.0.0.2", book=ClaimBook(), closest=lambda _: [far],
                        request=hops, send=lambda *_: None, clock=lambda: now[0])
    return claimant, hops, [rendezvous, middle, far]


async def test_a_claim_goes_first_to_the_closest_nodes_a_lookup_heard_from() -> None:
    digest = "sha256:" + "5e" * 32
    kid = key_id(digest)
    now = [100.0]
    routed, hops, _ = claimant_towards(kid, now)
    assert (await routed.claim(digest, 4, 10.0, 1.0)) is not None
    assert len(hops.asked) == 3 and routed.hops == 3  # far, middle, rendezvous
    hinted, hops, (rendezvous, middle, _) = claimant_towards(kid, now)
    hinted.hint(kid, [rendezvous, middle])
    answer = await hinted.claim(digest, 4, 10.0, 1.0)
    assert answer is not None and answer.go
    assert hops.asked == [rendezvous.node_id] and hinted.hops == 1


async def test_a_stale_or_farther_hint_is_not_followed() -> None:
    digest = "sha256:" + "5e" * 32
    kid = key_id(digest)
    now = [100.0]
    claimant, hops, (rendezvous, _, _) = claimant_towards(kid, now)
    claimant.hint(kid, [rendezvous])
    now[0] += HINT_TTL + 1  # the lookup was long ago: routed afresh from the table
    assert (await claimant.claim(digest, 4, 10.0, 1.0)) is not None
    assert len(hops.asked) == 3
    # A hint farther from the key than the claimant itself is never asked.
    near = Claimant(node_id=kid, mirror_port=5000, host="127.0.0.2", book=ClaimBook(),
                    closest=lambda _: [], request=hops, send=lambda *_: None,
                    clock=lambda: now[0])
    near.hint(kid, [rendezvous])
    answer = await near.claim(digest, 4, 10.0, 1.0)
    assert answer is not None and answer.go and len(hops.asked) == 3  # its own rendezvous
