"""Cluster keys: loading ``--cluster-key-file``, several keys in the codec, ``--peer-cidrs``."""

from __future__ import annotations

from pathlib import Path

import pytest

from spegel_core.config import SettingsRegistry, load_config
from spegel_core.errors import ConfigError
from spegel_core.peer_filter import PeerFilter
from spegel_core.protocols import DroppedDatagram, MetricEvent
from spegel_core.registries import MetricsHub
from spegel_kademlia import KademliaRouter, KademliaSettings
from spegel_kademlia.codec import Codec, DecodeError
from spegel_kademlia.ids import Contact
from spegel_kademlia.keys import load_cluster_keys
from spegel_kademlia.messages import AddProvider, Message, MessageType, Nodes, Ping, Providers
from spegel_kademlia.messages import ProviderInfo as Provided
from spegel_kademlia.plugin import spegel_add_settings, spegel_make_router
from spegel_kademlia.rpc import RpcEndpoint

OLD = b"old-cluster-key-0123456789abcdef"
NEW = b"new-cluster-key-0123456789abcdef"
SOURCE = ("127.0.0.1", 5001)


def message(body: object = None) -> Message:
    return Message(body or Ping(), request_id=7, sender=b"\x01" * 32,  # type: ignore[arg-type]
                   mirror_port=5000)


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_key_is_the_stripped_file_contents(tmp_path: Path) -> None:
    text = write(tmp_path / "a", b"  " + OLD + b"\n\n")
    raw = bytes(range(256))[::7] + b"\n\x00\xff" * 4  # binary: never split at a newline byte
    binary = write(tmp_path / "b", raw)
    assert load_cluster_keys([text]) == [OLD]
    assert load_cluster_keys([binary]) == [raw.strip()]


def test_two_keys_as_two_files_or_two_lines(tmp_path: Path) -> None:
    new, old = write(tmp_path / "new", NEW), write(tmp_path / "old", OLD)
    assert load_cluster_keys([new, old]) == [NEW, OLD]
    both = write(tmp_path / "both", NEW + b"\n" + OLD + b"\n")
    assert load_cluster_keys([both]) == [NEW, OLD]


@pytest.mark.parametrize(("content", "message"), [
    (b"short-key", "has 9 bytes; at least 16"),
    (b"   \n", "is empty"),
    (NEW + b"\nshort", "line 2"),
    (NEW + b"\n" + NEW, "same key"),
    (b"\n".join(bytes([65 + i]) * 20 for i in range(5)), "at most 4"),
])
def test_bad_key_files_are_one_line_config_errors(tmp_path: Path, content: bytes,
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cluster_keys([write(tmp_path / "key", content)])
    assert info.value.flag == "--cluster-key-file"
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_or_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*missing"):
        load_cluster_keys([str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="cannot read"):
        load_cluster_keys([str(tmp_path)])  # a directory


def registry() -> SettingsRegistry:
    reg = SettingsRegistry()
    spegel_add_settings(reg)
    return reg


def test_plugin_builds_a_keyed_router_or_fails_before_serving(tmp_path: Path) -> None:
    key = write(tmp_path / "key", OLD)
    values = {"router": "kademlia", "router_addr": "127.0.0.1:0", "data_dir": str(tmp_path)}
    config = load_config(registry(), {**values, "cluster_key_file": key,
                                      "peer_cidrs": "127.0.0.0/8, 10.1.2.3"})
    assert config.get(KademliaSettings).cluster_key_file == [key]
    assert config.core.peer_cidrs == ["127.0.0.0/8", "10.1.2.3/32"]
    router = spegel_make_router(config, [], MetricsHub())
    assert isinstance(router, KademliaRouter)
    assert router.status().extra["authenticated"] is True
    open_router = spegel_make_router(load_config(registry(), values), [], MetricsHub())
    assert isinstance(open_router, KademliaRouter)
    assert open_router.status().extra["authenticated"] is False
    short = write(tmp_path / "short", b"tiny")
    with pytest.raises(ConfigError, match="--cluster-key-file"):
        spegel_make_router(load_config(registry(), {**values, "cluster_key_file": short}),
                           [], MetricsHub())
    with pytest.raises(ConfigError, match="--peer-cidrs"):
        load_config(registry(), {**values, "peer_cidrs": "10.0.0.0/33"})


def test_codec_signs_with_the_first_key_and_accepts_any() -> None:
    rotating = Codec([NEW, OLD])
    assert rotating.key_count == 2
    signed_new = rotating.encode(message())
    assert Codec(NEW).decode(signed_new, SOURCE).type is MessageType.PING
    with pytest.raises(DecodeError) as info:
        Codec(OLD).decode(signed_new, SOURCE)
    assert info.value.reason == "mac" and info.value.message_type is MessageType.PING
    assert rotating.decode(Codec(OLD).encode(message()), SOURCE).type is MessageType.PING
    assert Codec([OLD, NEW]).decode(Codec(NEW).encode(message()), SOURCE).type \
        is MessageType.PING
    with pytest.raises(ValueError, match="16 bytes"):
        Codec([NEW, b"short"])


def test_a_replay_under_the_second_key_is_caught() -> None:
    data = Codec(OLD).encode(message())
    rotating = Codec([NEW, OLD])
    rotating.decode(data, SOURCE)
    with pytest.raises(DecodeError) as info:
        rotating.decode(data, SOURCE)
    assert info.value.reason == "replay"


class Events:
    def __init__(self) -> None:
        self.events: list[MetricEvent] = []

    def emit(self, event: MetricEvent) -> None:
        self.events.append(event)


def test_endpoint_counts_drops_by_reason_and_claimed_type() -> None:
    events = Events()
    seen: list[Message] = []
    rpc = RpcEndpoint(Codec(NEW), b"\x09" * 32, 5000, seen.append, events)
    add = AddProvider(b"\x03" * 32, b"\x01" * 32, 5000, 60)
    rpc.datagram_received(Codec(OLD).encode(message(add)), SOURCE)
    rpc.datagram_received(Codec().encode(message(add)), SOURCE)
    assert seen == []
    assert rpc.drop_reasons == {"mac": 1, "auth_missing": 1}
    assert rpc.dropped_types == {"add_provider": 2}
    assert [e for e in events.events if isinstance(e, DroppedDatagram)] == [
        DroppedDatagram("mac"), DroppedDatagram("auth_missing")]


class Sent:
    """A transport that keeps what the endpoint sends."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def sendto(self, data: bytes, addr: object = None, /) -> None:
        self.data.append(data)

    def close(self) -> None:
        pass


async def answered(rpc: RpcEndpoint, body: Nodes | Providers) -> Message:
    """The response ``rpc`` hands its caller when a trusted peer answers ``body``."""
    sent = Sent()
    rpc.connection_made(sent)
    peer = ("10.0.0.5", 5001)
    future = rpc.start(peer, Ping(), attempt_timeout=10)
    request = Codec().decode(sent.data[-1], peer)
    rpc.datagram_received(Codec().encode(Message(body, request.request_id, b"\x08" * 32,
                                                 5000)), peer)
    return await future


async def test_endpoint_drops_sources_and_entries_outside_the_peer_cidrs() -> None:
    seen: list[Message] = []
    trusted = PeerFilter(["10.0.0.0/8", "fd00::/8"])
    rpc = RpcEndpoint(Codec(), b"\x09" * 32, 5000, seen.append, Events(), allowed=trusted.allows)
    rpc.datagram_received(Codec().encode(message()), ("192.168.1.1", 5001))
    rpc.datagram_received(Codec().encode(message()), ("::ffff:192.168.1.1", 5001, 0, 0))
    assert seen == [] and rpc.drop_reasons == {"peer_cidrs": 2}
    contacts = (Contact(b"\x02" * 32, "10.1.1.1", 5001), Contact(b"\x03" * 32, "8.8.8.8", 5001),
                Contact(b"\x04" * 32, "fd00::1", 5001))
    providers = (Provided(b"\x05" * 32, "1.2.3.4", 5000), Provided(b"\x06" * 32, "10.9.9.9", 5000))
    # Answers lose their entries outside the networks before the lookup sees them.
    filtered = await answered(rpc, Providers(providers, contacts))
    assert isinstance(filtered.body, Providers)
    assert [p.host for p in filtered.body.providers] == ["10.9.9.9"]
    assert [c.host for c in filtered.body.contacts] == ["10.1.1.1", "fd00::1"]
    nodes = await answered(rpc, Nodes(contacts))
    assert isinstance(nodes.body, Nodes) and len(nodes.body.contacts) == 2


def test_peer_filter() -> None:
    anything = PeerFilter()
    assert not anything.restricted and anything.allows("8.8.8.8")
    only = PeerFilter(["127.0.0.0/24"])
    assert only.allows("127.0.0.9") and only.allows("::ffff:127.0.0.9")
    assert not only.allows("127.0.1.9") and not only.allows("node.example")
    assert "127.0.0.0/24" in repr(only)


def test_an_optional_key_that_is_missing_runs_open(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # The DaemonSet mounts an optional Secret: without it the node runs open and says so;
    # a key file that exists is still checked.
    values = {"router": "kademlia", "router_addr": "127.0.0.1:0", "data_dir": str(tmp_path),
              "cluster_key_optional": "true"}
    missing = str(tmp_path / "secret" / "key")
    with caplog.at_level("WARNING"):
        router = spegel_make_router(load_config(registry(), {**values,
                                                             "cluster_key_file": missing}),
                                    [], MetricsHub())
    assert isinstance(router, KademliaRouter)
    assert router.status().extra["authenticated"] is False
    assert "the DHT runs open" in caplog.text and missing in caplog.text
    key = write(tmp_path / "key", OLD)
    router = spegel_make_router(load_config(registry(), {**values, "cluster_key_file": key}),
                                [], MetricsHub())
    assert isinstance(router, KademliaRouter)
    assert router.status().extra["authenticated"] is True
    short = write(tmp_path / "short", b"tiny")
    with pytest.raises(ConfigError, match="--cluster-key-file"):
        spegel_make_router(load_config(registry(), {**values, "cluster_key_file": short}),
                           [], MetricsHub())
    # Not optional: a missing file stops the node before it serves.
    with pytest.raises(ConfigError, match="cannot read"):
        spegel_make_router(load_config(registry(), {**values, "cluster_key_optional": "false",
                                                    "cluster_key_file": missing}),
                           [], MetricsHub())
