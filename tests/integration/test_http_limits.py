"""A slow or greedy client cannot pin a real node: per-client connection cap, header timeout."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess

StartNode = Callable[..., NodeProcess]
SLOW_CLIENT = "127.0.0.222"  # any loopback address is this machine; it names the client


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def closed_now(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


@contextmanager
def slow_connections(node: NodeProcess, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections from :data:`SLOW_CLIENT` that send half a request head."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((SLOW_CLIENT, 0))
            sock.connect((node.ip, node.port))
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(sock)
        yield socks


def test_a_slow_client_cannot_pin_the_node(spegel_node: StartNode, tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", "docker.io/library/demo:v1", layer_sizes=(50_000,))
    node = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                       str(image.layout_dir), "--router", "none",
                       "--mirror-max-client-connections", "8", "--mirror-header-timeout", "1s")
    layer = image.layer_digests[0]
    started = time.monotonic()  # before any connection: every timer starts after this
    with slow_connections(node, 20) as socks:
        time.sleep(0.3)
        refused = [sock for sock in socks if closed_now(sock)]
        assert len(refused) == 12  # beyond the cap: closed at once
        held = [sock for sock in socks if sock not in refused]
        # Other clients are served as usual meanwhile.
        conn = http.client.HTTPConnection(node.ip, node.port, timeout=5)
        for _ in range(20):
            conn.request("GET", f"/v2/library/demo/blobs/{layer}")
            response = conn.getresponse()
            assert response.status == 200 and len(response.read()) == image.blobs[layer]
        conn.close()
        # The held ones never completed their headers: closed after the header timeout,
        # however slowly they keep trickling bytes.
        for sock in held[:2]:
            sock.sendall(b"a")
        assert all(closed_by_server(sock, 3.0) for sock in held)
        assert 0.9 < time.monotonic() - started < 6.0
    # With those gone, the slow client may connect again (the cap counts open connections).
    with socket.create_connection((node.ip, node.port), timeout=5,
                                  source_address=(SLOW_CLIENT, 0)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    assert "holds 8 connections" in node.log()
