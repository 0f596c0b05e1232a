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
