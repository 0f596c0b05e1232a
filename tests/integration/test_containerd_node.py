"""Real ``spegel registry`` processes with real containerd: serving from containerd's content
directory, and containerd pulling through hosts.toml files written by ``spegel configuration``."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from spegel_core.cli.main import main
from spegel_core.oci.image_builder import build_image
from spegel_core.oci.mediatypes import OCI_INDEX
from spegel_core.testing.containerd import ContainerdDaemon, import_layout, registry_args
from spegel_core.testing.nodes import NodeProcess
from spegel_core.testing.upstream import UpstreamRegistry

StartNode = Callable[..., NodeProcess]
REF = "docker.io/library/demo:v1"


def containerd_node(spegel_node: StartNode, daemon: ContainerdDaemon, *,
                    wait: bool = True) -> NodeProcess:
    return spegel_node(*registry_args(daemon), "--router", "none", wait=wait)


def wait_alive(node: NodeProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{node.url}/livez", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.05)


def open_files(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return found


def test_node_serves_from_the_content_directory(
    spegel_node: StartNode, containerd_daemon: ContainerdDaemon, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "layout", REF, layer_sizes=(24 * 2**20, 1000),
                        raw_layers=True, seed=3)
    import_layout(containerd_daemon, image.layout_dir, unpack=False)
    node = containerd_node(spegel_node, containerd_daemon)

    head = urllib.request.Request(f"{node.url}/v2/library/demo/manifests/v1?ns=docker.io",
                                  method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as response:
        assert response.headers["Docker-Content-Digest"] == image.index_digest
        assert response.headers["Content-Type"] == OCI_INDEX

    big = max(image.blobs, key=image.blobs.__getitem__)
    path = str(containerd_daemon.content_path / "blobs" / "sha256" / big.partition(":")[2])
    assert node.process is not None
    with socket.create_connection((node.ip, node.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /v2/library/demo/blobs/{big} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        # The response is far larger than the socket buffers: while it is stalled the
        # node holds containerd's blob file open (sendfile from it), not a copy.
        deadline = time.monotonic() + 20
        while path not in open_files(node.process.pid):
            assert time.monotonic() < deadline, "the blob file is not open in the node"
            time.sleep(0.02)
        received = len(first.partition(b"\r\n\r\n")[2])
        digest = hashlib.sha256(first.partition(b"\r\n\r\n")[2])
        while received < image.blobs[big]:
            chunk = sock.recv(1 << 20)
            assert chunk
            digest.update(chunk)
            received += len(chunk)
    assert f"sha256:{digest.hexdigest()}" == big

    ranged = urllib.request.Request(f"{node.url}/v2/library/demo/blobs/{big}",
                                    headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(ranged, timeout=5) as response:
        assert response.status == 206
        assert response.read() == image.blob_path(big).read_bytes()[100:200]


def test_node_is_not_ready_until_containerd_answers(
    spegel_node: StartNode, containerd_daemon: ContainerdDaemon, tmp_path: Path
) -> None:
    image = build_image(tmp_path / "layout", REF, layer_sizes=(1000,), seed=4)
    import_layout(containerd_daemon, image.layout_dir)
    containerd_daemon.stop()
    node = containerd_node(spegel_node, containerd_daemon, wait=False)
    wait_alive(node)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{node.url}/readyz", timeout=5)
    assert info.value.code == 503
    assert b"store disconnected" in info.value.read()
    containerd_daemon.start()
    node.wait_ready(timeout=30)  # the store reconnects with a backoff
    with urllib.request.urlopen(f"{node.url}/v2/library/demo/manifests/v1", timeout=5) as resp:
        assert resp.headers["Docker-Content-Digest"] == image.index_digest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_containerd_pulls_through_the_written_hosts_toml(
    spegel_node: StartNode, containerd_daemon: ContainerdDaemon, tmp_path: Path
) -> None:
    upstream = UpstreamRegistry(tmp_path / "upstream", port=_free_port()).start()
    try:
        reference = f"{upstream.address}/library/demo:v1"
        image = build_image(tmp_path / "layout", reference, layer_sizes=(4096, 300_000), seed=6)
        upstream.push_layout(image.layout_dir, reference, "library/demo:v1")
        node = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                           str(image.layout_dir), "--router", "none")
        hosts = tmp_path / "certs.d"
        assert main(["configuration", "--containerd-registry-config-path", str(hosts),
                     "--mirror-targets", node.url,
                     "--mirrored-registries", f"http://{upstream.address}"]) == 0
    finally:
        upstream.stop()  # from here on only the mirror can answer
    containerd_daemon.ctr("images", "pull", "--hosts-dir", str(hosts), "--plain-http", reference)
    check = containerd_daemon.ctr("images", "check", f"name=={reference}")
    assert "complete" in check and image.index_digest.partition(":")[2][:12] in \
        containerd_daemon.ctr("images", "ls")
    assert main(["cleanup", "--containerd-registry-config-path", str(hosts)]) == 0
    assert list(hosts.iterdir()) == []
    # Without the mirror's hosts.toml (and with the upstream down) the same pull fails.
    containerd_daemon.ctr("images", "rm", "--sync", reference)
    with pytest.raises(RuntimeError, match="failed"):
        containerd_daemon.ctr("images", "pull", "--hosts-dir", str(hosts), "--plain-http",
                              reference, timeout=60)
