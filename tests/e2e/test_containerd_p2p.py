"""Two nodes, each with its own real containerd: the second pulls from the first, peer to peer.

containerd is the client here (``ctr images pull --hosts-dir``, with hosts.toml files written
by ``spegel configuration``), and the Debian docker-registry is the upstream.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from spegel_core.cli.main import main
from spegel_core.mirror.peers import PeerSettings
from spegel_core.oci.image_builder import build_image
from spegel_core.testing.containerd import ContainerdDaemon, registry_args, temporary_daemon
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip
from spegel_core.testing.upstream import UpstreamRegistry

StartNode = Callable[..., NodeProcess]
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _status(url: str, method: str = "HEAD") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def daemons() -> Iterator[tuple[ContainerdDaemon, ContainerdDaemon]]:
    with temporary_daemon() as a, temporary_daemon() as b:
        yield a, b


def test_second_node_pulls_from_the_first_with_upstream_down(
    spegel_node: StartNode, daemons: tuple[ContainerdDaemon, ContainerdDaemon], tmp_path: Path
) -> None:
    daemon_a, daemon_b = daemons
    upstream = UpstreamRegistry(tmp_path / "upstream", port=_free_port()).start()
    reference = f"{upstream.address}/library/demo:v1"
    image = build_image(tmp_path / "layout", reference, layer_sizes=(2 * 2**20, 70_000), seed=9)
    upstream.push_layout(image.layout_dir, reference, "library/demo:v1")

    ip_a, ip_b = free_loopback_ip(), free_loopback_ip()
    peers = f"/ip4/{ip_a}/udp/5001,/ip4/{ip_b}/udp/5001"
    common = ["--router", "kademlia", "--bootstrap-kind", "static", "--static-peers", peers,
              "--mirror-resolve-timeout", "300ms"]
    node_a = spegel_node(*registry_args(daemon_a), *common, ip=ip_a)
    node_b = spegel_node(*registry_args(daemon_b), *common, ip=ip_b)
    hosts: dict[str, Path] = {}
    for name, node in (("a", node_a), ("b", node_b)):
        hosts[name] = tmp_path / f"certs-{name}"
        assert main(["configuration", "--containerd-registry-config-path", str(hosts[name]),
                     "--mirror-targets", node.url,
                     "--mirrored-registries", f"http://{upstream.address}"]) == 0

    # A: nobody has the image, the mirror says 404 and containerd falls back upstream.
    daemon_a.ctr("images", "pull", "--hosts-dir", str(hosts["a"]), "--plain-http", reference)
    ns = quote(upstream.address, safe="")
    tag_url = f"{node_b.url}/v2/library/demo/manifests/v1?ns={ns}"
    took = _until(lambda: _status(tag_url) == 200, 10, "B never found A's image")
    print(f"B resolved A's tag {took * 1000:.0f} ms after A's pull")

    upstream.stop()  # from here on, B can only get the image from A
    daemon_b.ctr("images", "pull", "--hosts-dir", str(hosts["b"]), "--plain-http", reference)
    check = daemon_b.ctr("images", "check", f"name=={reference}")
    assert "complete" in check, check
    registry_log = upstream.log()
    assert f"{ip_b}" not in registry_log

    # B drops its own copy: it is served from A again. Then A removes it too: B's
    # requests for it become fast 404s once A has withdrawn it.
    layer = image.layer_digests[0]
    blob_url = f"{node_b.url}/v2/library/demo/blobs/{layer}?ns={ns}"
    daemon_b.ctr("images", "rm", "--sync", reference)
    _until(lambda: _status(blob_url) == 200, 5, "B lost the blob although A holds it")
    daemon_a.ctr("images", "rm", "--sync", reference)
    _until(lambda: _status(blob_url) == 404, 15, "B still serves a blob A removed")
    started = time.perf_counter()
    assert _status(blob_url) == 404
    # A 404 that waited on a peer would take its request timeout (3 s); the bound sits
    # under that, far above the expected milliseconds, for a loaded machine.
    assert time.perf_counter() - started < PeerSettings().request_timeout - 0.5
