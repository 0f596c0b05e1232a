"""Address validation bookkeeping and the routing table's diversity rule (no sockets)."""

from __future__ import annotations

import pytest

from spegel_kademlia.admission import Admission
from spegel_kademlia.ids import Contact, random_id
from spegel_kademlia.messages import FindNode, Message
from spegel_kademlia.table import RoutingTable, ip_group

OWN = bytes(32)


def far(host: str, port: int = 5001) -> Contact:
    """A contact in the farthest bucket (top bit set)."""
    return Contact(b"\x80" + random_id()[1:], host, port)


def request(contact: Contact) -> Message:
    return Message(FindNode(random_id()), 1, contact.node_id, 5000, contact.host,
                   contact.port)


def test_validation_is_per_address_and_id() -> None:
    admission = Admission()
    contact = far("10.0.0.1")
    assert not admission.is_validated(contact)
    admission.validate(contact)
    assert admission.is_validated(contact)
    assert not admission.is_validated(Contact(random_id(), contact.host, contact.port))
    assert not admission.is_validated(Contact(contact.node_id, contact.host, 6000))


def test_validated_addresses_are_bounded() -> None:
    admission = Admission(max_validated=2)
    contacts = [far(f"10.0.0.{n}") for n in range(3)]
    for contact in contacts:
        admission.validate(contact)
    assert not admission.is_validated(contacts[0])
    assert admission.is_validated(contacts[2])


def test_credit_is_three_times_what_was_received_and_capped() -> None:
    admission = Admission(credit_cap=1000)
    address = ("10.0.0.1", 5001)
    assert not admission.spend(address, 1)
    admission.earn(address, 79)
    assert admission.credit(address) == 237
    assert not admission.spend(address, 238)
    assert admission.spend(address, 200)
    assert admission.credit(address) == 37
    for _ in range(100):
        admission.earn(address, 79)
    assert admission.credit(address) == 1000
    assert admission.credit(("10.0.0.1", 5002)) == 0  # per host:port


def test_answer_rate_per_source_ip() -> None:
    now = [0.0]
    admission = Admission(rate=100, unvalidated_rate=10, clock=lambda: now[0])
    allowed = sum(admission.allow("10.0.0.1", False) for _ in range(100))
    assert allowed == 20  # a bucket of twice the rate
    assert admission.allow("10.0.0.2", False)  # another source has its own
    assert admission.allow("10.0.0.1", True)  # validated: its own, larger bucket
    now[0] += 1.0
    assert sum(admission.allow("10.0.0.1", False) for _ in range(100)) == 10


def test_a_cookie_validates_only_the_address_and_id_it_was_given_to() -> None:
    admission = Admission()
    contact = far("10.0.0.1")
    cookie = admission.cookie(contact)
    assert len(cookie) == 8
    # Another id at the address, the address's other port, another address: refused.
    for other in (Contact(random_id(), contact.host, contact.port),
                  Contact(contact.node_id, contact.host, contact.port + 1),
                  Contact(contact.node_id, "10.0.0.2", contact.port)):
        assert not admission.check_cookie(other, cookie)
        assert not admission.is_validated(other)
    assert not admission.check_cookie(contact, bytes(8))
    assert not admission.check_cookie(contact, cookie[:7])
    assert admission.bad_cookies == 5
    assert not admission.is_validated(contact)
    assert admission.check_cookie(contact, cookie)
    assert admission.is_validated(contact)


def test_cookies_outlive_one_change_of_secret_not_two() -> None:
    now = [0.0]
    admission = Admission(cookie_period=100, clock=lambda: now[0])
    contact, late = far("10.0.0.1"), far("10.0.0.2")
    cookie, stale = admission.cookie(contact), admission.cookie(late)
    now[0] = 150.0  # one change: a cookie of the period before is still taken
    assert admission.cookie(contact) != cookie
    assert admission.check_cookie(contact, cookie)
    now[0] = 260.0  # one more: the secret of both first cookies is gone
    assert not admission.check_cookie(late, stale)
    idle = far("10.0.0.3")
    old = admission.cookie(idle)
    now[0] = 500.0  # two periods and more with nothing asked: both secrets are new
    assert not admission.check_cookie(idle, old)


def test_two_nodes_cookies_differ() -> None:
    contact = far("10.0.0.1")
    assert Admission().cookie(contact) != Admission().cookie(contact)


def test_table_takes_one_id_per_ip_port_and_two_per_ip() -> None:
    table = RoutingTable(OWN, k=20, max_per_ip=2)
    first = far("10.0.0.1", 1)
    table.add(first)
    same_endpoint = far("10.0.0.1", 1)
    assert not table.admits(same_endpoint)
    table.add(same_endpoint)
    assert same_endpoint.node_id not in table
    second = far("10.0.0.1", 2)
    table.add(second)
    third = far("10.0.0.1", 3)
    assert not table.admits(third)
    table.add(third)
    assert len(table) == 2 and table.refused == 2
    table.add(far("10.0.0.2", 1))
    assert len(table) == 3
    # A place freed is a place to take.
    table.remove(first.node_id)
    assert table.admits(third)
    table.add(third)
    assert third.node_id in table


def test_a_full_bucket_is_never_filled_from_one_address() -> None:
    table = RoutingTable(OWN, k=4, max_per_ip=2)
    for port in range(100):
        table.add(far("10.0.0.9", port))
    assert len(table.bucket(255)) == 2
    assert table.replacement_cache(255) == []


def test_replacement_caches_count_too() -> None:
    table = RoutingTable(OWN, k=2, max_per_ip=1)
    table.add(far("10.0.0.1"))
    table.add(far("10.0.0.2"))
    table.add(far("10.0.0.3"))  # bucket full: parked as a replacement
    assert len(table.replacement_cache(255)) == 1
    table.add(far("10.0.0.3", 9))  # same address as the parked one
    assert len(table.replacement_cache(255)) == 1


def test_a_move_that_breaks_the_rule_keeps_the_old_address() -> None:
    table = RoutingTable(OWN, k=20, max_per_ip=1)
    a, b = far("10.0.0.1"), far("10.0.0.2")
    table.add(a)
    table.add(b)
    assert not table.admits(Contact(b.node_id, "10.0.0.1", 7))
    table.add(Contact(b.node_id, "10.0.0.1", 7))
    assert table.get(b.node_id) == b
    assert table.admits(Contact(b.node_id, "10.0.0.3", 7))  # a new address to prove
    table.add(Contact(b.node_id, "10.0.0.3", 7))
    assert table.get(b.node_id) == Contact(b.node_id, "10.0.0.3", 7, (b.address,))
    assert not table.admits(far("10.0.0.2"))  # still b's, as its fallback
    table.add(Contact(b.node_id, "10.0.0.4", 7))
    table.add(Contact(b.node_id, "10.0.0.5", 7))
    # At most three addresses: the oldest went, and its IP was released.
    assert table.get(b.node_id) == Contact(b.node_id, "10.0.0.5", 7,
                                           (("10.0.0.4", 7), ("10.0.0.3", 7)))
    assert table.admits(far("10.0.0.2"))


@pytest.mark.parametrize(("host", "group"), [
    ("10.1.2.3", "10.1.2.3"),
    ("fd00::1", "fd00::/64"),
    ("fd00::2:1", "fd00::/64"),
    ("fd00:0:0:1::1", "fd00:0:0:1::/64"),
    ("::ffff:10.1.2.3", "10.1.2.3"),
    ("node-a", "node-a"),
])
def test_ipv6_counts_by_its_64(host: str, group: str) -> None:
    assert ip_group(host) == group


def test_no_limit_without_max_per_ip() -> None:
    table = RoutingTable(OWN, k=20)
    for port in range(10):
        table.add(far("10.0.0.1", port))
    assert len(table) == 10


def test_answers_are_cut_to_the_credit_closer_contacts_first() -> None:
    from spegel_kademlia.codec import Codec
    from spegel_kademlia.gate import cut_answer
    from spegel_kademlia.messages import Nodes, ProviderInfo, Providers

    codec = Codec()
    contacts = tuple(far(f"10.0.0.{n}") for n in range(20))
    providers = tuple(ProviderInfo(random_id(), f"10.0.1.{n}", 5000) for n in range(3))
    for room in (1, 39, 40, 200, 237, 10_000):  # a count byte (two for providers), entries
        cut = cut_answer(Nodes(contacts), room)
        assert isinstance(cut, Nodes) and cut.contacts == contacts[:len(cut.contacts)]
        size = codec.size(Message(cut, 1, OWN, 1)) - codec.overhead
        assert size <= room and (cut.contacts == contacts or size + 39 > room)
        assert (room < 40) == (not cut.contacts)
        both = cut_answer(Providers(providers, contacts), room + 1)
        assert isinstance(both, Providers)
        assert both.providers == providers[:len(both.providers)]
        assert not both.contacts or both.providers == providers  # providers first
        assert codec.size(Message(both, 1, OWN, 1)) - codec.overhead <= room + 1
    assert cut_answer(Nodes(contacts), 0) is None  # not even the count byte
    v6 = tuple(far(f"fd00::{n}") for n in range(5))
    assert len(cut_answer(Nodes(v6), 1 + 2 * 51).contacts) == 2  # type: ignore[union-attr]


def test_answers_of_dual_stack_contacts_are_cut_at_their_real_size() -> None:
    from spegel_kademlia.codec import Codec
    from spegel_kademlia.gate import cut_answer
    from spegel_kademlia.messages import Nodes

    codec = Codec()
    contacts = tuple(Contact(b"\x80" + random_id()[1:], f"10.0.0.{n}", 5001,
                             more=((f"fd00::{n}", 5001),)) for n in range(20))
    for room in (60, 200, 237, 500):
        cut = cut_answer(Nodes(contacts), room)
        assert isinstance(cut, Nodes) and cut.contacts
        assert codec.size(Message(cut, 1, OWN, 1)) - codec.overhead <= room
        if len(cut.contacts) < len(contacts):  # the next one would not have fitted
            bigger = Nodes(contacts[:len(cut.contacts) + 1])
            assert codec.size(Message(bigger, 1, OWN, 1)) - codec.overhead > room
