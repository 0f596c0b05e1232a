"""A fleet of real containerd nodes pulls one new image at once: one upstream fetch.

Every node misses at the same instant; each claims the layer at its rendezvous. One
is told go (its containerd fetches upstream), the others stream from their parents
in the tree as the bytes land. Failure cases: the fetcher's pull killed mid-layer, a
fetcher whose containerd never fetches (its upstream refuses it), a parent killed,
and a fetcher whose hosts.toml lists a second mirror (it never waits on itself).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from spegel_core.cli.configuration import hosts_toml
from spegel_core.testing.containerd import containerd_available
from spegel_core.testing.fleet import Fleet, FleetNode, until
from spegel_core.testing.throttle import ThrottledProxy

pytestmark = pytest.mark.e2e

MIB = 2**20
CLAIMS = "spegel_single_flight_claims_total"


def _fleet(tmp_path: Path, nodes: int, layer: int, rate: float,
           args: tuple[str, ...] = ()) -> Fleet:
    if not containerd_available():
        pytest.fail("containerd and ctr are required (apt-get install containerd; run as root)")
    return Fleet(tmp_path, nodes=nodes, layer_sizes=(layer,), rate=rate, seed=160,
                 node_args=list(args))


def _finish(member: FleetNode, pull: subprocess.Popen[str], timeout: float = 120) -> None:
    code = pull.wait(timeout=timeout)
    assert code == 0, f"{member.name}'s pull failed: {pull.stderr.read() if pull.stderr else ''}"


def _image_bytes(fleet: Fleet) -> int:
    assert fleet.image is not None
    return sum(fleet.image.blobs.values())


def _go_node(fleet: Fleet) -> FleetNode:
    until(lambda: any(m.metric(CLAIMS, 'role="go"') for m in fleet.nodes), 30,
          "nobody was told go")
    return next(m for m in fleet.nodes if m.metric(CLAIMS, 'role="go"'))


@pytest.fixture
def four(tmp_path: Path) -> Iterator[Fleet]:
    with _fleet(tmp_path, 4, 16 * MIB, 16e6) as fleet:
        yield fleet


def test_the_fleet_pulls_at_once_and_the_upstream_sends_one_copy(four: Fleet) -> None:
    pulls = [(member, member.start_pull(four.reference)) for member in four.nodes]
    for member, pull in pulls:
        _finish(member, pull)
    image = _image_bytes(four)
    print(f"upstream sent {four.upstream.bytes_down / image:.2f}x the image")
    for member in four.nodes:
        assert "complete" in member.check(four.reference)
    assert four.upstream.bytes_down <= 1.2 * image, "more than one copy crossed the link"
    # Manifests by digest are claimed too: one GET each crossed the link (the tag's
    # HEAD still goes upstream from every node, as without single flight).
    manifest_gets = Counter(line.split()[1] for line in four.upstream.requests
                            if line.startswith("GET ") and "/manifests/sha256:" in line)
    assert manifest_gets, f"no manifest GET went upstream: {four.upstream.requests}"
    assert set(manifest_gets.values()) == {1}, manifest_gets
    goes = sum(m.metric(CLAIMS, 'role="go"') for m in four.nodes)
    assert four.image is not None and 1 <= goes <= len(four.image.blobs)
    avoided = sum(m.metric("spegel_single_flight_upstream_avoided_total") for m in four.nodes)
    assert avoided >= len(four.nodes) - 1, "the others did not stream the layer from the tree"


def test_the_fetcher_never_waits_on_itself_through_a_second_mirror(tmp_path: Path) -> None:
    with _fleet(tmp_path, 2, 4 * MIB, 16e6) as fleet:
        a, b = fleet.nodes
        # a's containerd lists its own mirror, then b's; it reaches b from a's own address,
        # as a node's containerd does in a cluster.
        with ThrottledProxy(b.node.ip, b.node.port, rate=1e12, source=a.node.ip) as via:
            for hosts in a.hosts.glob("*/hosts.toml"):
                hosts.write_text(hosts_toml(f"http://{fleet.upstream.address}",
                                            [a.node.url, f"http://{via.address}"]))
            _finish(a, a.start_pull(fleet.reference))
            assert via.connections > 0, "a's containerd never asked the second mirror"
        assert a.metric(CLAIMS, 'role="go"') >= 1
        assert b.metric(CLAIMS, 'role="self"') >= 1, "b did not recognise the fetcher"
        assert b.metric(CLAIMS, 'role="wait"') == 0
        assert b.metric("spegel_single_flight_wait_seconds_count") == 0, "b held a's request"
        assert "complete" in a.check(fleet.reference)


def test_the_fetchers_pull_killed_mid_layer_every_other_node_completes(tmp_path: Path) -> None:
    layer = 16 * MIB
    with _fleet(tmp_path, 4, layer, 6e6) as fleet:
        digest = fleet.layers[0]
        first, *others = fleet.nodes
        pull_first = first.start_pull(fleet.reference)
        until(lambda: (first.ingest_size(digest) or 0) > 0, 30, "the first pull never started")
        pulls = [(member, member.start_pull(fleet.reference)) for member in others]
        until(lambda: all((m.ingest_size(digest) or 0) > 2 * MIB for m in others), 60,
              "the others never streamed from the tree")
        pull_first.send_signal(signal.SIGKILL)
        pull_first.wait()
        for member, pull in pulls:
            _finish(member, pull)
            assert "complete" in member.check(fleet.reference)
        image = _image_bytes(fleet)
        print(f"upstream sent {fleet.upstream.bytes_down / image:.2f}x the image")
        assert fleet.upstream.bytes_down <= 2.5 * image


def test_a_fetcher_that_never_fetches_leaves_the_others_to_go_upstream(tmp_path: Path) -> None:
    with _fleet(tmp_path, 3, 4 * MIB, 16e6, ("--single-flight-wait", "2s")) as fleet:
        first, *others = fleet.nodes
        layer = fleet.layers[0].encode()
        assert fleet.registry is not None
        refusing = ThrottledProxy(fleet.registry.host, fleet.registry.port, rate=1e12,
                                  refuse=b"/blobs/" + layer).start()
        try:
            for hosts in first.hosts.glob("*/hosts.toml"):  # its upstream refuses the layer
                hosts.write_text(hosts_toml(f"http://{refusing.address}", [first.node.url]))
            pull_first = first.start_pull(fleet.reference)
            until(lambda: first.metric(CLAIMS, 'role="go"') >= 1, 30, "first was never told go")
            started = time.monotonic()
            pulls = [(member, member.start_pull(fleet.reference)) for member in others]
            assert pull_first.wait(timeout=60) != 0, "the refused pull succeeded"
            assert refusing.refused >= 1
        finally:
            refusing.stop()
        for member, pull in pulls:
            _finish(member, pull)
            assert "complete" in member.check(fleet.reference)
        took = time.monotonic() - started
        waited = sum(m.metric("spegel_single_flight_wait_seconds_count", 'outcome="timeout"')
                     for m in others)
        print(f"the others finished in {took:.2f}s after {waited:.0f} waits ended in 404")
        assert waited >= 1, "nobody waited on the fetcher that never fetched"
        assert sum(m.metric(CLAIMS, 'role="go"') + m.metric(CLAIMS, 'role="wait"')
                   for m in others) >= len(others)


def test_a_parent_killed_mid_stream_its_child_completes(tmp_path: Path) -> None:
    layer = 16 * MIB
    with _fleet(tmp_path, 3, layer, 6e6, ("--peer-fanout", "1")) as fleet:
        digest = fleet.layers[0]
        a, b, c = fleet.nodes  # fan-out 1: a (go) feeds b, b feeds c
        pull_a = a.start_pull(fleet.reference)
        until(lambda: (a.ingest_size(digest) or 0) > 0, 30, "a never started")
        pull_b = b.start_pull(fleet.reference)
        until(lambda: (b.ingest_size(digest) or 0) > 0, 30, "b never streamed")
        pull_c = c.start_pull(fleet.reference)
        until(lambda: (c.ingest_size(digest) or 0) > 2 * MIB, 60, "c never streamed")
        assert c.metric(CLAIMS, 'role="wait"') >= 1
        b.node.kill()  # the parent of c dies mid-stream
        _finish(c, pull_c)
        _finish(a, pull_a)
        assert "complete" in c.check(fleet.reference)
        pull_b.wait(timeout=120)
