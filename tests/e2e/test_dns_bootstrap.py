"""Five real node processes that bootstrap from a real DNS server (dnsmasq) on loopback,
as from a headless Service, and find each other's content."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.testing.dns import DnsServer, dnsmasq_path
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip

pytestmark = pytest.mark.e2e
# No skip when dnsmasq is missing: CI installs it (Debian dnsmasq-base).
assert dnsmasq_path() is not None, "dnsmasq is required (apt-get install dnsmasq-base)"

NAME = "spegel-bootstrap.spegel.test"
StartNode = Callable[..., NodeProcess]


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[DnsServer]:
    with DnsServer(tmp_path / "dns") as server:
        yield server


def _digest_of(url: str) -> str | None:
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            digest = response.headers.get("Docker-Content-Digest")  # case-insensitive
            return str(digest) if digest else None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_five_nodes_bootstrap_from_dns_and_find_each_others_content(
        spegel_node: StartNode, dnsmasq: DnsServer, tmp_path: Path) -> None:
    ips = [free_loopback_ip(5000) for _ in range(5)]
    dnsmasq.set_records(NAME, ips)  # the headless Service: every node, ready or not
    dnsmasq.reload()
    images: list[BuiltImage] = []
    nodes: list[NodeProcess] = []
    for i, ip in enumerate(ips):
        layout = tmp_path / f"node-{i}"
        images.append(build_image(layout, f"docker.io/library/app{i}:v1",
                                  layer_sizes=(4096,), seed=i))
        nodes.append(spegel_node(
            "--content-store", "oci-layout", "--oci-layout-path", str(layout),
            "--router", "kademlia", "--bootstrap-kind", "dns",
            "--dns-bootstrap-domain", NAME, "--dns-nameservers", dnsmasq.nameserver,
            "--dns-sample-size", "2", "--mirror-resolve-timeout", "300ms",
            ip=ip, wait=False))
    for node in nodes:
        node.wait_ready()
    missing = {(n, i) for n in range(5) for i in range(5) if n != i}
    deadline = time.monotonic() + 20
    while missing and time.monotonic() < deadline:
        for n, i in sorted(missing):
            url = f"{nodes[n].url}/v2/library/app{i}/manifests/v1?ns=docker.io"
            if _digest_of(url) == images[i].index_digest:
                missing.discard((n, i))
        if missing:
            time.sleep(0.2)
    assert not missing, f"(node, image) pairs never found: {sorted(missing)}"
    queries = dnsmasq.log().count(f"query[A] {NAME}")
    assert 5 <= queries <= 5 * 3, f"{queries} DNS queries for 5 nodes"
