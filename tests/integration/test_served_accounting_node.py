"""A real node: a zero-copy response the client abandons is not counted as served.

The blob goes out with ``sendfile`` (the zero-copy server); the client reads a
little and closes its socket. The node's ``spegel_mirror_bytes_total`` must not
grow for it; a whole GET afterwards adds exactly the blob's size.
"""

from __future__ import annotations

import re
import socket
import struct
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess

StartNode = Callable[..., NodeProcess]
SIZE = 48 * 2**20  # far more than the socket buffers hold


def metric(node: NodeProcess, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"{node.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    pattern = rf"^{re.escape(name)}(?:{{([^}}]*)}})? ([0-9.e+-]+)$"
    return sum(float(value) for found, value in re.findall(pattern, text, re.MULTILINE)
               if labels in found)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_an_abandoned_zero_copy_response_is_not_counted(spegel_node: StartNode,
                                                        tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", "docker.io/library/big:v1",
                        layer_sizes=(SIZE,), raw_layers=True, platforms=(("linux", "amd64"),),
                        seed=41)
    node = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                       str(image.layout_dir))
    layer = image.layer_digests[0]
    path = f"/v2/library/big/blobs/{layer}"
    finished = "http_request_duration_seconds_count"

    with socket.create_connection((node.ip, node.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        while len(received) < 256 * 1024:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")
        # Reset, not a polite close: the server's next send fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(lambda: metric(node, finished, 'code="200"') >= 1,
             "the abandoned request never finished on the node")
    assert metric(node, "spegel_mirror_bytes_total", 'source="local"') == 0

    with urllib.request.urlopen(f"{node.url}{path}", timeout=30) as response:
        assert len(response.read()) == SIZE
    wait_for(lambda: metric(node, finished, 'code="200"') >= 2,
             "the whole GET never finished on the node")
    assert metric(node, "spegel_mirror_bytes_total", 'source="local"') == SIZE
    assert "Traceback" not in node.log()
