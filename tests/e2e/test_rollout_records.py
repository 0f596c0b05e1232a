"""Issue 14's three-node case with real node processes: what B holds stays findable.

A starts alone; B (holding the same images) bootstraps from A, so while B announces,
the network is {A} and every record of B lands on A. C bootstraps from A too; then A
is killed. C asks for manifests that B holds and that C never asked for before: B
names itself as the provider of what it holds (and records follow a growing network),
so every round is served by B, none is a 404.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip
from spegel_core.testing.waiting import until

StartNode = Callable[..., NodeProcess]
ROUNDS = 5

pytestmark = pytest.mark.e2e


def _node(spegel_node: StartNode, ip: str, layout: Path, seed: str) -> NodeProcess:
    return spegel_node("--content-store", "oci-layout", "--oci-layout-path", str(layout),
                       "--oci-layout-poll-interval", "200ms", "--router", "kademlia",
                       "--bootstrap-kind", "static", "--static-peers", f"/ip4/{seed}/udp/5001",
                       "--mirror-resolve-timeout", "300ms", ip=ip)


def _metric(node: NodeProcess, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{node.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _get(url: str) -> tuple[int, bytes, str | None]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), None


def test_records_of_a_node_that_joined_a_tiny_network_stay_findable(
    spegel_node: StartNode, tmp_path: Path
) -> None:
    layout_a, layout_b, layout_c = (tmp_path / n for n in ("a", "b", "c"))
    images: list[BuiltImage] = [
        build_image(layout_a, f"docker.io/library/app{n}:v{n}", layer_sizes=(4096,), seed=n)
        for n in range(ROUNDS)]
    shutil.copytree(layout_a, layout_b)  # A and B hold the same images
    layout_c.mkdir()
    ip_a, ip_b, ip_c = (free_loopback_ip(5000) for _ in range(3))
    a = _node(spegel_node, ip_a, layout_a, ip_a)  # its own entry only: it starts alone
    b = _node(spegel_node, ip_b, layout_b, ip_a)

    def b_announced() -> bool:
        keys = (_metric(b, "spegel_advertised_image_tags")
                + _metric(b, "spegel_advertised_content_digests"))
        acks = _metric(b, "spegel_dht_messages_total", type="add_provider_ack",
                       outcome="received")
        return keys > 0 and acks >= keys

    until(b_announced, 20, "B's records were never stored (on A, the only node B knows)")
    c = _node(spegel_node, ip_c, layout_c, ip_a)
    until(lambda: _metric(c, "spegel_routing_table_peers") >= 2, 20, "C never learnt B through A")
    a.kill()
    for n, image in enumerate(images):  # each round: content C never asked for before
        name = f"library/app{n}"
        status, body, digest = _get(f"{c.url}/v2/{name}/manifests/v{n}?ns=docker.io")
        assert status == 200, (n, body[:200], c.log())
        assert digest == image.index_digest
        assert "sha256:" + hashlib.sha256(body).hexdigest() == image.index_digest
        manifest = image.manifest_digests[0]
        status, body, digest = _get(f"{c.url}/v2/{name}/manifests/{manifest}?ns=docker.io")
        assert status == 200 and digest == manifest, (n, body[:200])
    served = _metric(c, "spegel_mirror_requests_total", cache="hit")
    assert served == 2 * ROUNDS
    assert _metric(c, "spegel_mirror_requests_total", cache="miss") == 0
