"""A real ``spegel registry`` process on a loopback address, with real clients."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.pull import MirrorClient
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip
from spegel_core.testing.upstream import skopeo_copy
from tests.bench.client import RawClient

REF = "docker.io/library/demo:v1"
StartNode = Callable[..., NodeProcess]


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    path = tmp_path / "layout"
    path.mkdir()
    return path


@pytest.fixture
def image(layout: Path) -> BuiltImage:
    return build_image(layout, REF, layer_sizes=(3 * 2**20, 200_000))


@pytest.fixture
def node(spegel_node: StartNode, layout: Path, image: BuiltImage) -> NodeProcess:
    return spegel_node("--content-store", "oci-layout", "--oci-layout-path", str(layout),
                       "--oci-layout-poll-interval", "100ms")


def _raw(node: NodeProcess, data: bytes) -> bytes:
    with socket.create_connection((node.ip, node.port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in data:
                break
        return b"".join(chunks)


def test_skopeo_copies_through_the_mirror_with_digests_intact(
    node: NodeProcess, image: BuiltImage, tmp_path: Path
) -> None:
    dest = tmp_path / "copy"
    skopeo_copy(f"docker://{node.ip}:{node.port}/library/demo:v1", f"oci:{dest}:v1")
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.index_digest
    for digest in image.blobs:
        algorithm, _, encoded = digest.partition(":")
        blob = (dest / "blobs" / algorithm / encoded).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == encoded


def test_pull_client_verifies_everything(node: NodeProcess, image: BuiltImage) -> None:
    client = MirrorClient(node.ip, node.port)
    result = client.pull(REF)
    client.close()
    assert result.digest == image.index_digest
    assert set(result.verified) == set(image.blobs)


def test_zero_copy_full_and_ranged_reads(node: NodeProcess, image: BuiltImage) -> None:
    digest = image.layer_digests[0]
    data = image.blob_path(digest).read_bytes()
    client = RawClient(node.ip, node.port)
    try:
        path = f"/v2/library/demo/blobs/{digest}"
        assert client.get(path).bytes == len(data)
        # Keep-alive still works after a zero-copy response.
        for start, end in ((0, 0), (1, 2**20), (len(data) - 5, len(data) - 1)):
            with urllib.request.urlopen(urllib.request.Request(
                    f"{node.url}{path}", headers={"Range": f"bytes={start}-{end}"})) as response:
                assert response.status == 206
                assert response.read() == data[start:end + 1]
    finally:
        client.close()


MALFORMED: list[bytes] = [
    b"GET /v2/library/demo/blobs/sha256:zz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/demo/manifests/%00%01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/demo/blobs/sha256:" + b"f" * 64
    + b" HTTP/1.1\r\nHost: x\r\nRange: bytes=x\r\n\r\n",
    b"GET /v2/" + b"a/" * 2000 + b"manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/demo/manifests/v1?ns=%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100,  # a TLS ClientHello
    b"GET /v2/ HTTP/1.1\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"PUT /v2/library/demo/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"DELETE /v2/library/demo/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/demo/blobs/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/demo/tags/list HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/demo/manifests/sha256:abc HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/DEMO/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/demo/manifests/v1?ns=a..b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /v2/library/demo/blobs/md5:00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/library/demo/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
]


def test_malformed_requests_get_4xx_and_the_node_stays_up(node: NodeProcess) -> None:
    for request in MALFORMED:
        answer = _raw(node, request)
        if not answer:
            continue  # the parser may simply drop a connection that is not HTTP
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, (request[:80], answer[:200])
        assert b"Traceback" not in answer
    with urllib.request.urlopen(f"{node.url}/readyz") as response:
        assert response.status == 200
    assert node.process is not None and node.process.poll() is None


def test_images_added_and_removed_while_running(node: NodeProcess, layout: Path) -> None:
    from spegel_core.oci.image_builder import remove_image

    second = build_image(layout, "ghcr.io/org/app:2", layer_sizes=(1000,), seed=3)
    url = f"{node.url}/v2/org/app/manifests/2?ns=ghcr.io"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as response:
                assert response.headers["Docker-Content-Digest"] == second.index_digest
                break
        except urllib.error.HTTPError:
            assert time.monotonic() < deadline, "new image never became visible"
            time.sleep(0.1)
    remove_image(layout, "ghcr.io/org/app:2")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD")).close()
            time.sleep(0.1)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            return
    pytest.fail("removed image still served")


def test_sigterm_drains_in_flight_responses_then_exits_zero(
    node: NodeProcess, layout: Path
) -> None:
    # A blob far larger than socket buffers, so the response is still being sent.
    big = build_image(layout, "docker.io/library/big:v1", platforms=(("linux", "amd64"),),
                      layer_sizes=(48 * 2**20,), raw_layers=True, seed=11)
    digest = big.layer_digests[0]
    size = big.blobs[digest]
    sock = socket.create_connection((node.ip, node.port), timeout=30)
    sock.sendall(f"GET /v2/library/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    hasher = hashlib.sha256(head.partition(b"\r\n\r\n")[2])
    received = len(head.partition(b"\r\n\r\n")[2])
    assert node.process is not None
    # Not reading: the server fills the socket buffers and waits on the rest.
    node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while True:  # the drain has begun once the listener refuses new connections
        try:
            socket.create_connection((node.ip, node.port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the listener stayed open after SIGTERM"
        time.sleep(0.05)
    assert node.process.poll() is None, "node exited before the response was drained"
    while received < size:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        hasher.update(chunk)
        received += len(chunk)
    sock.close()
    assert received == size
    assert f"sha256:{hasher.hexdigest()}" == digest
    assert node.process.wait(timeout=15) == 0


@pytest.mark.parametrize("args, flag", [
    (["--registry-addr", "nonsense"], "--registry-addr"),
    (["--mirror-resolve-timeout=-1s"], "--mirror-resolve-timeout"),
    (["--mirror-resolve-timeout"], "--mirror-resolve-timeout"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--content-store", "nope"], "--content-store"),
    (["--content-store", "oci-layout", "--oci-layout-path", "/does/not/exist"],
     "--oci-layout-path"),
    (["--content-store", "oci-layout"], "--oci-layout-path"),
])
def test_invalid_settings_fail_at_start_with_one_line(args: list[str], flag: str) -> None:
    result = subprocess.run([sys.executable, "-m", "spegel_core.cli.main", "registry", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0]


def test_invalid_environment_value_is_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spegel_core.cli.main", "registry"],
        capture_output=True, text=True, timeout=60,
        env={"SPEGEL_MIRROR_RESOLVE_RETRIES": "many", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "SPEGEL_MIRROR_RESOLVE_RETRIES" in result.stderr


def test_plugins_json_lists_the_oci_layout_store() -> None:
    result = subprocess.run([sys.executable, "-m", "spegel_core.cli.main", "plugins", "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    plugins = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert "spegel_make_content_store" in plugins["oci-layout"]["hooks"]


def test_demo_pulls_peer_to_peer(tmp_path: Path) -> None:
    ip = free_loopback_ip(5000)
    result = subprocess.run(
        [sys.executable, "-m", "spegel_core.cli.main", "demo", "--first-ip", ip,
         "--layer-mib", "1", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "digests verified : 9 (index matches)" in result.stdout
    assert "exit codes [0, 0, 0]" in result.stdout
    assert "from peer" in result.stdout


def test_concurrent_clients_all_get_the_right_bytes(node: NodeProcess, image: BuiltImage) -> None:
    digest = image.layer_digests[0]
    errors: list[str] = []

    def fetch() -> None:
        client = RawClient(node.ip, node.port)
        try:
            for _ in range(3):
                timing = client.get(f"/v2/library/demo/blobs/{digest}")
                if timing.bytes != image.blobs[digest]:
                    errors.append(f"short read {timing.bytes}")
            hasher = hashlib.sha256()
            with urllib.request.urlopen(f"{node.url}/v2/library/demo/blobs/{digest}") as resp:
                hasher.update(resp.read())
            if f"sha256:{hasher.hexdigest()}" != digest:
                errors.append("digest mismatch")
        finally:
            client.close()

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
