"""A slow or greedy client cannot pin a real node: per-client connection cap, header timeout."""

from __future__ import annotations

import http.client
import resource
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
        # Other clients are served as usual meanwhile. The first answer is also a
        # barrier: the server accepted this connection after the slow ones (one
        # listening socket, in order) and closed those beyond the cap as it did.
        conn = http.client.HTTPConnection(node.ip, node.port, timeout=10)
        for n in range(20):
            conn.request("GET", f"/v2/library/demo/blobs/{layer}")
            response = conn.getresponse()
            assert response.status == 200 and len(response.read()) == image.blobs[layer]
            if n == 0:
                refused = [sock for sock in socks if closed_now(sock)]
                assert len(refused) == 12  # beyond the cap: closed at once
        conn.close()
        held = [sock for sock in socks if sock not in refused]
        # The held ones never completed their headers: closed after the header timeout,
        # however slowly they keep trickling bytes.
        for sock in held[:2]:
            sock.sendall(b"a")
        assert all(closed_by_server(sock, 20.0) for sock in held)
        assert time.monotonic() - started > 0.9  # by the timeout (a lower bound only)
    # With those gone, the slow client may connect again (the cap counts open connections).
    with socket.create_connection((node.ip, node.port), timeout=5,
                                  source_address=(SLOW_CLIENT, 0)) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    assert "holds 8 connections" in node.log()


FLOOD_ADDRESSES = [f"127.0.{40 + n // 200}.{1 + n % 200}" for n in range(40)]


def flood_size() -> int:
    """Idle connections per address: 200 (8000 in all) if the open-file limit allows it.

    The test process holds every flood socket; the node raises its own limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 9000 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return max(1, min(200, (soft - 1000) // len(FLOOD_ADDRESSES)))


def test_an_idle_connection_flood_does_not_starve_the_node_itself(
        spegel_node: StartNode, tmp_path: Path) -> None:
    # 8000 idle connections from 40 addresses, 200 each (under the per-client cap):
    # uvicorn's limit_concurrency counted them and answered the node's own containerd
    # 503. Now idle sockets cost no request slot: the node's own requests succeed.
    image = build_image(tmp_path / "layout", "docker.io/library/demo:v1", layer_sizes=(50_000,))
    node = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                       str(image.layout_dir), "--router", "none",
                       "--mirror-max-client-connections", "256",
                       "--mirror-header-timeout", "20s")
    per_address = flood_size()
    print(f"\nopen-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}: "
          f"{per_address} x {len(FLOOD_ADDRESSES)} idle connections")
    layer = image.layer_digests[0]
    with ExitStack() as stack:
        flood = []
        for host in FLOOD_ADDRESSES:
            for _ in range(per_address):
                sock = stack.enter_context(socket.socket())
                sock.bind((host, 0))
                sock.settimeout(10)
                sock.connect((node.ip, node.port))
                flood.append(sock)
        statuses = []
        for _ in range(5):  # the node's own client: it dials the node's address
            conn = http.client.HTTPConnection(node.ip, node.port, timeout=10,
                                              source_address=(node.ip, 0))
            conn.request("HEAD", "/v2/library/demo/manifests/v1")
            head = conn.getresponse()
            head.read()
            statuses.append(head.status)
            conn.request("GET", f"/v2/library/demo/blobs/{layer}")
            response = conn.getresponse()
            statuses.append(response.status)
            assert len(response.read()) == image.blobs[layer]
            conn.close()
        # Another pod meanwhile: answered too (a miss is a fast 404), never a 503.
        conn = http.client.HTTPConnection(node.ip, node.port, timeout=10,
                                          source_address=("127.0.39.1", 0))
        conn.request("GET", "/v2/library/other/manifests/v1")
        other = conn.getresponse().status
        conn.close()
        held = sum(not closed_now(sock) for sock in flood)
        assert statuses == [200] * 10
        assert other == 404
        assert held == len(flood)  # the flood was really open all along
    assert "Exceeded concurrency limit" not in node.log()
