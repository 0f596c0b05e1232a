"""Parsing of ``--static-peers`` multiaddrs."""

from __future__ import annotations

import pytest

from spegel_core.protocols import PeerAddress
from spegel_static.multiaddrs import StaticPeer, parse_static_peer

GOOD = [
    ("/ip4/127.0.0.2/udp/5001", StaticPeer("ip4", "127.0.0.2", 5001)),
    ("/ip4/10.0.0.5/udp/1", StaticPeer("ip4", "10.0.0.5", 1)),
    ("/ip4/10.0.0.5/udp/65535", StaticPeer("ip4", "10.0.0.5", 65535)),
    ("/ip4/10.0.0.5", StaticPeer("ip4", "10.0.0.5", 7001)),  # default port
    ("/ip4/10.0.0.5/", StaticPeer("ip4", "10.0.0.5", 7001)),
    ("  /ip4/10.0.0.5/udp/5001  ", StaticPeer("ip4", "10.0.0.5", 5001)),
    ("/ip6/::1/udp/5001", StaticPeer("ip6", "::1", 5001)),
    ("/ip6/fd00:0:0::0a/udp/5001", StaticPeer("ip6", "fd00::a", 5001)),
    ("/ip6/FD00::B", StaticPeer("ip6", "fd00::b", 7001)),
    ("/ip6/::ffff:127.0.0.2/udp/5001", StaticPeer("ip6", "::ffff:7f00:2", 5001)),
    ("/dns4/node-a.local/udp/5001", StaticPeer("dns4", "node-a.local", 5001)),
    ("/dns4/Node-A.Example.COM./udp/5001", StaticPeer("dns4", "node-a.example.com", 5001)),
    ("/dns6/node-b.test/udp/6000", StaticPeer("dns6", "node-b.test", 6000)),
    ("/dns/spegel-0.spegel.svc.cluster.local/udp/5001",
     StaticPeer("dns", "spegel-0.spegel.svc.cluster.local", 5001)),
    ("/dns/localhost", StaticPeer("dns", "localhost", 7001)),
]

BAD = [
    ("", "not a multiaddr"),
    ("garbage", "not a multiaddr"),
    ("10.0.0.5:5001", "not a multiaddr"),
    ("/", "empty"),
    ("/garbage/1.2.3.4/udp/5001", "unknown protocol"),
    ("/ip4/999.1.1.1/udp/5001", "not IPv4"),
    ("/ip4/1.2.3/udp/5001", "not IPv4"),
    ("/ip4/::1/udp/5001", "not IPv4"),
    ("/ip6/1.2.3.4/udp/5001", "not IPv6"),
    ("/ip4/1.2.3.4/udp", "invalid multiaddr"),
    ("/ip4/1.2.3.4/udp/abc", "invalid multiaddr"),
    ("/ip4/1.2.3.4/udp/70000", "invalid multiaddr"),
    ("/ip4/1.2.3.4/udp/-1", "invalid multiaddr"),
    ("/ip4/1.2.3.4/udp/0", "port 0"),
    ("/ip4/1.2.3.4/tcp/5001", "speaks UDP"),
    ("/dns4/node-a/tcp/5001", "speaks UDP"),
    ("/ip4/1.2.3.4/udp/5001/quic", "nothing may follow"),
    ("/ip4/1.2.3.4/udp/5001/udp/5002", "nothing may follow"),
    ("/ip4/1.2.3.4/udp/5001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
     "nothing may follow"),
    ("/ip4/1.2.3.4/ip4/1.2.3.5/udp/1", "expected /udp/PORT"),
    ("/udp/5001", "must start with"),
    ("/tcp/5001", "must start with"),
    ("/unix/tmp/sock", "must start with"),
    ("/dns4//udp/5001", "invalid multiaddr"),
    ("/dns4/-bad-/udp/5001", "invalid multiaddr"),
    ("/dns4/a_b.test/udp/5001", "invalid multiaddr"),
    ("/ip6/fe80::1%eth0/udp/5001", "not IPv6"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[g[0].strip() or "blank" for g in GOOD])
def test_good(text: str, expected: StaticPeer) -> None:
    peer = parse_static_peer(text, default_port=7001)
    assert (peer.protocol, peer.host, peer.port) == (
        expected.protocol, expected.host, expected.port)
    assert peer.text == text.strip()


@pytest.mark.parametrize(("text", "reason"), BAD, ids=[b[0] or "empty" for b in BAD])
def test_bad(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_static_peer(text, default_port=5001)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300


def test_address_of_ip_peers_and_names() -> None:
    assert parse_static_peer("/ip6/::1/udp/9", default_port=1).address() == PeerAddress("::1", 9)
    name = parse_static_peer("/dns4/a.test", default_port=5001)
    assert name.is_name and str(name) == "/dns4/a.test/udp/5001"
    with pytest.raises(ValueError, match="resolve it first"):
        name.address()
    assert not parse_static_peer("/ip4/1.2.3.4", default_port=1).is_name


def test_long_garbage_is_cut_in_the_message() -> None:
    with pytest.raises(ValueError) as info:
        parse_static_peer("/ip4/" + "9" * 5000, default_port=1)
    assert len(str(info.value)) < 300
