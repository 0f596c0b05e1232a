"""IPv6: ``:PORT`` listens dual-stack where the kernel allows; a node serves on ``[::1]``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from spegel_core.config import Address
from spegel_core.oci.image_builder import build_image
from spegel_core.server.listen import listen_socket

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this kernel")


def _free_port(host: str, family: socket.AddressFamily) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_empty_host_is_dual_stack_where_the_kernel_allows() -> None:
    if not socket.has_dualstack_ipv6():
        pytest.fail("this kernel has IPv6 but no dual-stack sockets")
    with listen_socket(Address("", 0)) as server:
        assert server.family == socket.AF_INET6
        assert server.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = server.getsockname()[1]
        assert _connects("127.0.0.1", port) and _connects("::1", port)


def test_literal_hosts_bind_only_their_family() -> None:
    with listen_socket(Address("::1", 0)) as server:
        port = server.getsockname()[1]
        assert server.family == socket.AF_INET6 and _connects("::1", port)
        assert not _connects("127.0.0.1", port)
    with listen_socket(Address("127.0.0.1", 0)) as server:
        assert server.family == socket.AF_INET


@pytest.fixture
def ipv6_node(tmp_path: Path) -> Iterator[tuple[str, str]]:
    layout = tmp_path / "layout"
    image = build_image(layout, "docker.io/library/demo:v1", layer_sizes=(10_000,))
    port = _free_port("::1", socket.AF_INET6)
    metrics = _free_port("::1", socket.AF_INET6)
    log = (tmp_path / "node.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "spegel_core.cli.main", "registry", "--router", "none",
         "--registry-addr", f"[::1]:{port}", "--metrics-addr", f"[::1]:{metrics}",
         "--content-store", "oci-layout", "--oci-layout-path", str(layout)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://[::1]:{port}", image.layer_digests[0]
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def test_a_node_serves_on_ipv6_loopback(ipv6_node: tuple[str, str]) -> None:
    url, layer = ipv6_node
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, "node on [::1] never became ready"
        time.sleep(0.05)
    with urllib.request.urlopen(f"{url}/v2/library/demo/blobs/{layer}", timeout=5) as response:
        assert response.status == 200 and response.headers["OCI-Namespace"] == "docker.io"


def _free_pair() -> int:
    """A port free on [::1] for TCP, with the next one free for UDP (the router)."""
    for _ in range(100):
        port = _free_port("::1", socket.AF_INET6)
        if port >= 65000:
            continue
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
                udp.bind(("::1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair on [::1]")


def test_two_nodes_find_each_other_over_ipv6(tmp_path: Path) -> None:
    """The DHT over [::1]: a node with nothing fetches a layer from the other by peer hop."""
    image = build_image(tmp_path / "a", "docker.io/library/demo:v1", layer_sizes=(5000,))
    (tmp_path / "b").mkdir()
    ports = [_free_pair(), _free_pair()]
    processes = []
    try:
        for index, (layout, port, other) in enumerate(((tmp_path / "a", ports[0], ports[1]),
                                                       (tmp_path / "b", ports[1], ports[0]))):
            log = (tmp_path / f"node{index}.log").open("wb")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "spegel_core.cli.main", "registry",
                 "--registry-addr", f"[::1]:{port}", "--router-addr", f"[::1]:{port + 1}",
                 "--metrics-addr", f"[::1]:{_free_port('::1', socket.AF_INET6)}",
                 "--content-store", "oci-layout", "--oci-layout-path", str(layout),
                 "--router", "kademlia", "--bootstrap-kind", "static",
                 "--static-peers", f"/ip6/::1/udp/{other + 1}",
                 "--mirror-resolve-timeout", "300ms"],
                stdout=log, stderr=subprocess.STDOUT))
            log.close()
        url = f"http://[::1]:{ports[1]}/v2/library/demo/blobs/{image.layer_digests[0]}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    body = response.read()
                    assert response.headers["X-Spegel-Source"] == "peer"
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "node1.log").read_text()[-2000:]
            time.sleep(0.1)
        assert len(body) == image.blobs[image.layer_digests[0]]
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)
