"""Faults with real node processes on loopback addresses (same ports on every node).

- a provider killed mid-stream: every stream resumes from another provider with Range
  (with the mirror verifying blobs, and with ``--peer-blob-verify client``, where bodies
  go socket to socket in the kernel);
- a peer serving wrong bytes under a digest: never passed on as a complete 200;
- the same peers with ``--peer-blob-verify client``: a body that ends or stalls before its
  announced length is never completed; bytes of the announced length are passed on as the
  peer sent them (the client's digest check is the one that counts there);
- 20,000 random datagrams at a node's router port: it stays ready and keeps finding content;
- the DNS server down at start, then back: ready throughout, joins once DNS answers;
- 20% of the nodes killed at once: lookups of content on live nodes still succeed.

Covered elsewhere: containerd restarted (tests/integration/test_containerd_store.py
``test_restart_goes_not_ready_then_ready_with_resync`` and test_containerd_node.py), the
upstream registry down (tests/e2e/test_containerd_p2p.py, containerd pulling through
hosts.toml), a node with another cluster key (tests/e2e/test_cluster_key.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.testing.dns import DnsServer, dnsmasq_path, free_port
from spegel_core.testing.faults import (
    HostilePeer,
    RawResponse,
    SeedDiscovery,
    honest_responder,
    http_response,
    raw_get,
)
from spegel_core.testing.nodes import NodeProcess, free_loopback_ip
from spegel_kademlia import KademliaRouter, KademliaSettings
from tests.dht_probe import providers_of

StartNode = Callable[..., NodeProcess]
REF = "docker.io/library/demo:v1"
ONE_PLATFORM = (("linux", "amd64"),)

pytestmark = pytest.mark.e2e


def static(*ips: str) -> list[str]:
    return ["--bootstrap-kind", "static",
            "--static-peers", ",".join(f"/ip4/{ip}/udp/5001" for ip in ips)]


def layout_node(spegel_node: StartNode, layout: Path, *extra: str, ip: str | None = None,
                wait: bool = True) -> NodeProcess:
    layout.mkdir(parents=True, exist_ok=True)
    return spegel_node("--content-store", "oci-layout", "--oci-layout-path", str(layout),
                       "--oci-layout-poll-interval", "200ms", "--router", "kademlia",
                       "--mirror-resolve-timeout", "500ms", *extra, ip=ip, wait=wait)


def status(url: str, method: str = "HEAD") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def ready(node: NodeProcess) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{node.url}/readyz", timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def router_peers(node: NodeProcess) -> int:
    router = ready(node)[1].get("router")
    assert isinstance(router, dict)
    return int(router["peers"])


def dns_rounds(node: NodeProcess) -> int:
    """DNS bootstrap rounds the node has finished, whatever their result (its /metrics)."""
    with urllib.request.urlopen(f"{node.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    name = "spegel_dns_query_duration_seconds_count"
    return int(sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " ")))


def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} after {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - started


def stop_all(nodes: list[NodeProcess]) -> None:
    """SIGTERM every node at once, then wait (the fixture would stop them one by one)."""
    running = [n.process for n in nodes if n.process is not None and n.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def link_layout(source: Path, target: Path) -> None:
    """Give the layout ``target`` (watched by a node) the images of ``source``: blobs first."""
    shutil.copytree(source, target, copy_function=os.link, dirs_exist_ok=True,
                    ignore=lambda where, names: ["index.json"] if Path(where) == source else [])
    shutil.copy(source / "index.json", target / "index.json.tmp")
    (target / "index.json.tmp").replace(target / "index.json")


def blob_url(node: NodeProcess, digest: str, name: str = "library/demo") -> str:
    return f"{node.url}/v2/{name}/blobs/{digest}?ns=docker.io"


# -- a provider killed mid-stream ------------------------------------------------------
class SlowStream:
    """A GET whose body is read only when asked (so the transfer stalls meanwhile)."""

    def __init__(self, node: NodeProcess, path: str, extra: str = "") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.settimeout(30)
        self.sock.connect((node.ip, node.port))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536)
        head, _, self.first = data.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        self.length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")))

    def read_some(self, count: int) -> None:
        while len(self.first) < count:
            self.first += self.sock.recv(65536)

    def read_rest(self) -> tuple[int, str]:
        digest = hashlib.sha256(self.first)
        received = len(self.first)
        while received < self.length:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        self.sock.close()
        return received, f"sha256:{digest.hexdigest()}"


@pytest.mark.parametrize("verify", ["mirror", "client"])
def test_provider_killed_mid_stream_resumes_from_another(spegel_node: StartNode,
                                                         tmp_path: Path, verify: str) -> None:
    image = build_image(tmp_path / "layout", REF, layer_sizes=(64 * 2**20,), raw_layers=True,
                        platforms=ONE_PLATFORM, seed=11)
    layer = image.layer_digests[0]
    ips = [free_loopback_ip() for _ in range(3)]
    first, consumer, second = (
        layout_node(spegel_node, image.layout_dir, *static(ips[1]), ip=ips[0], wait=False),
        layout_node(spegel_node, tmp_path / "empty", *static(ips[0], ips[2]),
                    "--peer-blob-verify", verify, ip=ips[1], wait=False),
        layout_node(spegel_node, tmp_path / "second", *static(ips[0], ips[1]), ip=ips[2],
                    wait=False))
    for node in (first, consumer, second):
        node.wait_ready()
    until(lambda: status(blob_url(consumer, layer)) == 200, 15, "the consumer never found it")
    streams = [SlowStream(consumer, f"/v2/library/demo/blobs/{layer}") for _ in range(4)]
    for stream in streams:
        assert stream.status == 200 and stream.length == image.blobs[layer]
    # A range of part of the blob (never hashed here, relayed socket to socket).
    ranged = SlowStream(consumer, f"/v2/library/demo/blobs/{layer}", "Range: bytes=1000-\r\n")
    assert ranged.status == 206 and ranged.length == image.blobs[layer] - 1000
    for stream in [*streams, ranged]:
        stream.read_some(256 * 1024)  # every stream is under way, then stalls
    link_layout(image.layout_dir, tmp_path / "second")  # the second node gets the image
    second_mirror = f"{second.ip}:{second.port}"
    until(lambda: second_mirror in asyncio.run(providers_of(layer, consumer)), 15,
          "the second provider never advertised")
    first.kill()
    results = [stream.read_rest() for stream in streams]
    assert results == [(image.blobs[layer], layer)] * 4  # all complete, none corrupt
    rest = hashlib.sha256(image.blob_path(layer).read_bytes()[1000:]).hexdigest()
    assert ranged.read_rest() == (image.blobs[layer] - 1000, f"sha256:{rest}")
    log = consumer.log_path.read_text()
    assert log.count(f"resuming {layer}") >= 5, log
    assert f"from {second.url}" in log


# -- a peer serving wrong bytes ----------------------------------------------------------
MODES = ("corrupt", "truncate", "long", "short", "stall")


def hostile_responder(image: BuiltImage, mode: str) -> Callable[[str, dict[str, str], str],
                                                                bytes]:
    honest = honest_responder(image)

    def respond(target: str, headers: dict[str, str], digest: str) -> bytes:
        answer = honest(target, headers, digest)
        head, _, body = answer.partition(b"\r\n\r\n")
        if mode == "corrupt":  # same length, some bytes flipped
            return head + b"\r\n\r\n" + bytes(b ^ 0x5A for b in body[:512]) + body[512:]
        if mode in ("truncate", "stall"):  # half the bytes, then close (or hang)
            return head + b"\r\n\r\n" + body[: len(body) // 2]
        size = len(body) + 4096 if mode == "long" else len(body) - 4096
        return http_response("200 OK", {"Content-Length": str(size),
                                        "Docker-Content-Digest": digest}, body[:size])
    return respond


async def serve_hostile_peers(image: BuiltImage, consumer: NodeProcess,
                              done: threading.Event, ready_peers: list[str]) -> None:
    """One hostile mirror per mode, each announcing one layer (and every manifest)."""
    peers: list[HostilePeer] = []
    routers: list[KademliaRouter] = []
    try:
        for mode, layer in zip(MODES, image.layer_digests, strict=True):
            ip = free_loopback_ip()
            peer = HostilePeer(hostile_responder(image, mode), host=ip, port=5000,
                               hold_open=30.0 if mode == "stall" else 0.0)
            await peer.start()
            router = KademliaRouter(host=ip, port=5001, mirror_port=5000,
                                    discovery=[SeedDiscovery([(consumer.ip, consumer.port + 1)])],
                                    settings=KademliaSettings(kademlia_bootstrap_backoff_max=0.2))
            await router.start()
            await router.advertise([layer, *image.manifest_digests])
            peers.append(peer)
            routers.append(router)
            ready_peers.append(f"{ip}:5000")
        await asyncio.to_thread(done.wait, 120)
    finally:
        for router in routers:
            await router.aclose()
        for peer in peers:
            await peer.aclose()


@dataclass
class HostileRun:
    """A consumer whose only providers of every layer are hostile peers (one per mode)."""

    image: BuiltImage
    consumer: NodeProcess
    honest: NodeProcess
    #: What GET of each layer (in MODES order) gave, all fetched at once.
    results: list[RawResponse]

    def honest_provider_appears(self, tmp_path: Path) -> None:
        """The honest node gets the layers and advertises them to the consumer."""
        link_layout(self.image.layout_dir, tmp_path / "honest")
        honest_mirror = f"{self.honest.ip}:{self.honest.port}"
        until(lambda: all(honest_mirror in asyncio.run(providers_of(layer, self.consumer))
                          for layer in self.image.layer_digests), 15,
              "the honest provider never advertised")

    def get(self, layer: str) -> RawResponse:
        return raw_get(self.consumer.ip, self.consumer.port, BLOB_PATH.format(layer),
                       timeout=20)


BLOB_PATH = "/v2/library/demo/blobs/{}?ns=docker.io"


@contextmanager
def hostile_run(spegel_node: StartNode, tmp_path: Path, *consumer_args: str
                ) -> Iterator[HostileRun]:
    """Start the consumer (``consumer_args`` added), an honest node without the image,
    and the hostile peers; fetch every layer through the consumer. The peers stop on exit.
    """
    image = build_image(tmp_path / "layout", REF, layer_sizes=(3 * 2**20,) * len(MODES),
                        raw_layers=True, platforms=ONE_PLATFORM, seed=12)
    # A long penalty: however slow the machine, the liars are not asked again after.
    consumer = layout_node(spegel_node, tmp_path / "empty", "--mirror-peer-penalty", "10m",
                           *consumer_args, wait=False)
    honest = layout_node(spegel_node, tmp_path / "honest", *static(consumer.ip), wait=False)
    consumer.wait_ready()
    honest.wait_ready()
    done = threading.Event()
    announced: list[str] = []
    thread = threading.Thread(target=asyncio.run,
                              args=(serve_hostile_peers(image, consumer, done, announced),))
    thread.start()
    try:
        until(lambda: len(announced) == len(MODES), 10, "hostile peers not started")
        layers = image.layer_digests
        # Wait until every bad layer is found (a HEAD reads no body, so nothing is judged).
        until(lambda: all(status(blob_url(consumer, layer)) == 200 for layer in layers), 15,
              "the consumer never found the hostile peers")
        run = HostileRun(image, consumer, honest, [])
        with ThreadPoolExecutor(len(layers)) as pool:  # the stalling peer takes seconds
            run.results = list(pool.map(run.get, layers))
        yield run
    finally:
        done.set()
        thread.join(timeout=20)


def assert_manifests_are_not_served(run: HostileRun) -> None:
    """Manifests are verified before their first byte in every mode: a 404."""
    for manifest in run.image.manifest_digests:
        assert status(f"{run.consumer.url}/v2/library/demo/manifests/{manifest}", "GET") == 404


def test_wrong_bytes_are_never_passed_on_as_a_complete_200(spegel_node: StartNode,
                                                           tmp_path: Path) -> None:
    with hostile_run(spegel_node, tmp_path) as run:
        layers = run.image.layer_digests
        for mode, layer, result in zip(MODES, layers, run.results, strict=True):
            whole_and_wrong = (result.status == 200 and result.complete
                               and hashlib.sha256(result.body).hexdigest() != layer[7:])
            assert not whole_and_wrong, mode
            assert result.status != 200 or not result.complete, (mode, result.status)
        assert_manifests_are_not_served(run)
        # An honest provider appears: the client's retry goes there (the liars are
        # penalised) and gets the right bytes.
        run.honest_provider_appears(tmp_path)
        for layer in layers:
            retry = run.get(layer)
            assert retry.status == 200 and retry.complete
            assert hashlib.sha256(retry.body).hexdigest() == layer[7:]
        log = run.consumer.log_path.read_text()
        assert log.count("penalising peer") >= len(MODES)
        assert "cut off GET" in log and "Traceback" not in log  # one line each


#: With --peer-blob-verify client: what a client gets from each hostile peer when no
#: other provider has the layer. A body shorter than announced (truncate, long: the peer
#: announces more than it sends; stall) is cut off; a body of the announced length is
#: passed on as the peer sent it, and only the client's digest check tells.
CLIENT_MODE_OUTCOMES = {"corrupt": "whole, wrong digest", "truncate": "cut off",
                        "long": "cut off", "short": "whole, wrong digest", "stall": "cut off"}


def test_client_mode_never_completes_a_short_body(spegel_node: StartNode,
                                                  tmp_path: Path) -> None:
    with hostile_run(spegel_node, tmp_path, "--peer-blob-verify", "client") as run:
        layers = run.image.layer_digests
        for mode, layer, result in zip(MODES, layers, run.results, strict=True):
            assert result.status == 200, (mode, result.status)
            right = hashlib.sha256(result.body).hexdigest() == layer[7:]
            outcome = "cut off" if not result.complete else (
                "whole, right digest" if right else "whole, wrong digest")
            assert outcome == CLIENT_MODE_OUTCOMES[mode], (mode, len(result.body))
        assert_manifests_are_not_served(run)
        # The peers whose bodies broke off are penalised: with an honest provider the
        # retry goes there and gets the right bytes.
        run.honest_provider_appears(tmp_path)
        for mode, layer in zip(MODES, layers, strict=True):
            if CLIENT_MODE_OUTCOMES[mode] != "cut off":
                continue
            retry = run.get(layer)
            assert retry.status == 200 and retry.complete, mode
            assert hashlib.sha256(retry.body).hexdigest() == layer[7:], mode
        log = run.consumer.log_path.read_text()
        assert log.count("penalising peer") >= 3
        assert "cut off GET" in log and "Traceback" not in log


# -- 20,000 random datagrams -------------------------------------------------------------
def random_datagrams(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes of 0 to 9000 bytes; a quarter start like a real header (parser reached)."""
    datagrams = []
    for i in range(count):
        size = rng.randint(0, 9000) if i % 2 else rng.randint(0, 1200)
        data = rng.randbytes(size)
        if i % 4 == 1:
            header = struct.pack("!2sBBBQ32sH", b"SK", 1, rng.randint(1, 8), 0,
                                 rng.getrandbits(64), rng.randbytes(32), rng.randint(0, 65535))
            data = header + data[len(header):]
        datagrams.append(data)
    return datagrams


def test_random_datagrams_leave_the_node_ready_and_finding(spegel_node: StartNode,
                                                           tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", REF, layer_sizes=(1000,) * 10,
                        platforms=ONE_PLATFORM, seed=13)
    provider = layout_node(spegel_node, image.layout_dir, wait=False)
    node = layout_node(spegel_node, tmp_path / "empty", *static(provider.ip), wait=False)
    provider.wait_ready()
    node.wait_ready()
    until(lambda: status(blob_url(node, image.layer_digests[0])) == 200, 15, "not found")
    rng = random.Random(8)
    datagrams = random_datagrams(rng, 20_000)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        for batch, layer in enumerate(image.layer_digests[1:]):
            for data in datagrams[batch * 2222:(batch + 1) * 2222]:
                sender.sendto(data, (node.ip, node.port + 1))  # loopback router port only
                sent += 1
            assert ready(node)[0] == 200
            assert status(blob_url(node, layer)) == 200, f"lost content after {sent}"
        for data in datagrams[sent:]:
            sender.sendto(data, (node.ip, node.port + 1))
            sent += 1
    assert sent == 20_000
    assert ready(node)[0] == 200 and router_peers(node) >= 1
    assert node.process is not None and node.process.poll() is None
    assert "Traceback" not in node.log()


# -- DNS down at start -------------------------------------------------------------------
def test_dns_down_at_start_then_back(spegel_node: StartNode, tmp_path: Path) -> None:
    assert dnsmasq_path() is not None, "dnsmasq is required (apt-get install dnsmasq-base)"
    name = "spegel-bootstrap.spegel.test"
    image = build_image(tmp_path / "layout", REF, layer_sizes=(1000,),
                        platforms=ONE_PLATFORM, seed=14)
    provider = layout_node(spegel_node, image.layout_dir, wait=False)
    (tmp_path / "dns").mkdir()
    dns = DnsServer(tmp_path / "dns", port=free_port())
    node = layout_node(spegel_node, tmp_path / "empty", "--bootstrap-kind", "dns",
                       "--dns-bootstrap-domain", name, "--dns-nameservers", dns.nameserver,
                       "--dns-timeout", "300ms", "--kademlia-bootstrap-backoff-max", "500ms",
                       wait=False)
    provider.wait_ready()
    node.wait_ready()
    try:
        # No DNS: ready all along, alone, through three failed bootstrap rounds (each
        # would have let it join, had DNS answered).
        first = dns_rounds(node)

        def alone_after_three_rounds() -> bool:
            assert ready(node)[0] == 200 and router_peers(node) == 0
            return dns_rounds(node) >= first + 3

        until(alone_after_three_rounds, 30, "the node stopped asking DNS")
        assert status(blob_url(node, image.layer_digests[0])) == 404
        dns.set_records(name, [provider.ip, node.ip])
        dns.start()

        def joined() -> bool:
            code, _ = ready(node)
            assert code == 200
            return router_peers(node) >= 1

        until(joined, 15, "never joined once DNS answered")
        until(lambda: status(blob_url(node, image.layer_digests[0])) == 200, 10,
              "joined but does not find the provider's content")
    finally:
        dns.stop()


# -- 20% of the nodes killed at once -------------------------------------------------------
def test_lookups_survive_a_fifth_of_the_nodes_killed(spegel_node: StartNode,
                                                    tmp_path: Path) -> None:
    count = 10
    ips = [free_loopback_ip() for _ in range(count)]
    images = [build_image(tmp_path / f"image{i}", f"docker.io/library/app{i}:v1",
                          layer_sizes=(500, 700, 900), platforms=ONE_PLATFORM, seed=100 + i)
              for i in range(count)]
    # k = 4: each record lives on the 4 nodes closest to its key (not on all ten), so
    # lookups must route around the dead to find the live holders.
    nodes = [layout_node(spegel_node, tmp_path / f"n{i}", "--kademlia-k", "4",
                         *static(ips[(i + 1) % count], ips[(i + 3) % count]),
                         ip=ips[i], wait=False) for i in range(count)]
    for node in nodes:
        node.wait_ready(timeout=60)
    # Content arrives once the nodes know each other (as images are pulled in a running
    # cluster), so every record is stored at the nodes closest to its key.
    until(lambda: all(router_peers(node) >= count // 2 for node in nodes), 30,
          "the routing tables never filled")
    for i in range(count):
        link_layout(images[i].layout_dir, tmp_path / f"n{i}")

    def everyone_finds_everyone() -> bool:
        return all(status(f"{nodes[n].url}/v2/library/app{i}/manifests/v1") == 200
                   for n in range(count) for i in range(count) if n != i)

    until(everyone_finds_everyone, 40, "the cluster never converged")
    rng = random.Random(5)
    dead = set(rng.sample(range(count), count // 5))
    for n in dead:
        nodes[n].kill()
    live = [n for n in range(count) if n not in dead]
    outcomes = []
    started = time.monotonic()
    for n in live:
        for i in live:
            if i == n:
                continue
            # Blobs were never asked before: each is a fresh lookup in the DHT.
            for digest in [*images[i].layer_digests, *images[i].config_digests]:
                outcomes.append(status(blob_url(nodes[n], digest, f"library/app{i}")) == 200)
    elapsed = time.monotonic() - started
    rate = sum(outcomes) / len(outcomes)
    assert len(outcomes) == len(live) * (len(live) - 1) * 4
    assert rate >= 0.99, f"{rate:.1%} of {len(outcomes)} lookups succeeded"
    print(f"{len(outcomes)} lookups after killing {sorted(dead)}: {rate:.2%} in {elapsed:.1f}s")
    stop_all(nodes)
