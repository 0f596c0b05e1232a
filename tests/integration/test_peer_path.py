"""The mirror's peer path over real HTTP: a provider node process, hostile peers in-process."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from spegel_core.config import SpegelConfig
from spegel_core.errors import PeerError
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.oci.reference import Reference
from spegel_core.protocols import (
    MirrorRequest,
    Peer,
    PeerPenalised,
    ResolveDuration,
    Source,
    tag_key,
)
from spegel_core.testing.fakes import MemoryContentStore, MemoryNetwork, MemoryRouter, RecordingSink
from spegel_core.testing.nodes import NodeProcess

REF = "docker.io/library/demo:v1"
#: Seconds a request that should end at once is given: far above any loaded machine's
#: delay, below the waits a test sets with :data:`LONG_WAITS` (a peer's connect timeout,
#: 1 s, and request timeout, 3 s, are not: a refused connection is what ends at once).
GUARD = 20.0


@pytest.fixture
def image(tmp_path: Path) -> BuiltImage:
    return build_image(tmp_path / "layout", REF, layer_sizes=(3 * 2**20, 5000))


@pytest.fixture
def provider(spegel_node: Callable[..., NodeProcess], image: BuiltImage) -> NodeProcess:
    return spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                       str(image.layout_dir))


class BadPeer:
    """An HTTP peer that announces the right length and then misbehaves."""

    def __init__(self, image: BuiltImage, mode: str) -> None:
        self.image, self.mode = image, mode
        self.server: asyncio.base_events.Server | None = None
        self.requests = 0
        #: Answers it has sent ("slow" sends none until it is closed).
        self.answered = 0
        self.release = asyncio.Event()

    async def start(self) -> Peer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return Peer("127.0.0.1", port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        request = await reader.readuntil(b"\r\n\r\n")
        if self.mode == "slow":
            await self.release.wait()  # answers once closed; hedging must not wait for it
        path = request.split(b" ")[1].decode()
        digest = path.split("/")[-1].split("?")[0]
        data = self.image.blob_path(digest).read_bytes()
        if self.mode == "corrupt":
            body = bytes(b ^ 0xFF for b in data[:100]) + data[100:]
        else:  # "truncate": half the bytes, then hang up
            body = data[: len(data) // 2]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + body)
        self.answered += 1
        await writer.drain()
        writer.close()

    async def aclose(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def consumer(
    mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
    register_plugin: Callable[[object, str], None], request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryNetwork, RecordingSink]]:
    from spegel_core import hookimpl

    network = MemoryNetwork()
    sink = RecordingSink()

    class Wiring:
        @hookimpl
        def spegel_make_router(self, config: SpegelConfig, discovery: Any, metrics: Any) -> Any:
            return MemoryRouter(network, Peer("127.0.0.1", 1))

        @hookimpl
        def spegel_register_metrics(self, config: SpegelConfig, registry: Any) -> None:
            registry.add(sink)

    register_plugin(Wiring(), "wiring")
    settings = {"mirror_resolve_timeout": "200ms", **getattr(request, "param", {})}
    config = make_config(content_store="memory", router="memory", **settings)
    async with mirror_client(config, MemoryContentStore()) as client:
        yield client, network, sink


def _announce(network: MemoryNetwork, peer: Peer, image: BuiltImage) -> None:
    network.add_provider(tag_key(Reference.parse(REF)), peer)
    for digest in image.blobs:
        network.add_provider(digest, peer)


async def test_tag_manifest_and_blobs_through_a_peer(consumer: Any, provider: NodeProcess,
                                                     image: BuiltImage) -> None:
    client, network, sink = consumer
    _announce(network, Peer(provider.ip, provider.port), image)
    head = await client.head("/v2/library/demo/manifests/v1?ns=docker.io")
    assert head.status_code == 200
    assert head.headers["docker-content-digest"] == image.index_digest
    assert head.headers["x-spegel-source"] == "peer"
    for digest in image.manifest_digests:
        response = await client.get(f"/v2/library/demo/manifests/{digest}")
        assert "sha256:" + hashlib.sha256(response.content).hexdigest() == digest
    layer = image.layer_digests[0]
    data = image.blob_path(layer).read_bytes()
    blob = await client.get(f"/v2/library/demo/blobs/{layer}")
    assert blob.status_code == 200 and blob.content == data
    ranged = await client.get(f"/v2/library/demo/blobs/{layer}",
                              headers={"Range": "bytes=1000-1999"})
    assert ranged.status_code == 206 and ranged.content == data[1000:2000]
    assert ranged.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    outcomes = {(e.kind, e.source) for e in sink.of_type(MirrorRequest)}
    assert ("blob", Source.PEER) in outcomes and ("manifest", Source.PEER) in outcomes
    assert any(e.found for e in sink.of_type(ResolveDuration))


async def test_marked_requests_are_never_forwarded(consumer: Any, provider: NodeProcess,
                                                   image: BuiltImage) -> None:
    client, network, _ = consumer
    _announce(network, Peer(provider.ip, provider.port), image)
    marked = {"X-Spegel-Mirrored": "true"}
    assert (await client.head("/v2/library/demo/manifests/v1", headers=marked)).status_code == 404
    layer = image.layer_digests[1]
    assert (await client.get(f"/v2/library/demo/blobs/{layer}", headers=marked)).status_code == 404


#: Every wait a miss could sit out set far above :data:`GUARD`.
LONG_WAITS = pytest.mark.parametrize(
    "consumer", [{"mirror_resolve_timeout": "60s", "single_flight_wait": "30s"}],
    indirect=True)


@LONG_WAITS
async def test_nobody_has_it_is_a_fast_404(consumer: Any) -> None:
    client, _, sink = consumer
    # The lookup ends when the router has no more providers to give: a 404 that sat
    # out the resolve timeout or a single-flight wait would meet the guard.
    async with asyncio.timeout(GUARD):
        response = await client.get("/v2/library/demo/blobs/sha256:" + "1" * 64)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    misses = [e for e in sink.of_type(MirrorRequest) if e.source is Source.NONE]
    assert misses and misses[-1].status == 404


@LONG_WAITS
async def test_dead_provider_is_a_fast_404_not_a_hang(consumer: Any, image: BuiltImage) -> None:
    import socket

    client, network, sink = consumer
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = Peer("127.0.0.1", sock.getsockname()[1])
    _announce(network, dead, image)
    async with asyncio.timeout(GUARD):  # refused at once: no timeout is waited out
        assert (await client.head("/v2/library/demo/manifests/v1")).status_code == 404
        layer = image.layer_digests[0]
        assert (await client.get(f"/v2/library/demo/blobs/{layer}")).status_code == 404
    assert PeerPenalised("connect", "peer") in sink.events


async def test_corrupt_peer_is_never_passed_on_as_200(consumer: Any, provider: NodeProcess,
                                                      image: BuiltImage) -> None:
    client, network, _ = consumer
    bad = BadPeer(image, "corrupt")
    bad_peer = await bad.start()
    layer = image.layer_digests[0]
    network.add_provider(layer, bad_peer)
    try:
        # In-process the ASGI transport re-raises what cut the response short; a real
        # server closes the connection before the last chunk (tests/e2e).
        with pytest.raises(PeerError, match="does not match its digest"):
            await client.get(f"/v2/library/demo/blobs/{layer}")
        assert bad.requests == 1
        network.add_provider(layer, Peer(provider.ip, provider.port))
        retry = await client.get(f"/v2/library/demo/blobs/{layer}")  # bad peer is penalised
        assert retry.status_code == 200
        assert retry.content == image.blob_path(layer).read_bytes()
        assert bad.requests == 1
    finally:
        await bad.aclose()


async def test_broken_stream_resumes_from_another_provider(consumer: Any, provider: NodeProcess,
                                                           image: BuiltImage) -> None:
    client, network, _ = consumer
    bad = BadPeer(image, "truncate")
    bad_peer = await bad.start()
    layer = image.layer_digests[0]
    network.add_provider(layer, bad_peer)
    network.add_provider(layer, Peer(provider.ip, provider.port))
    try:
        response = await client.get(f"/v2/library/demo/blobs/{layer}")
        assert response.status_code == 200
        assert response.content == image.blob_path(layer).read_bytes()
        assert bad.requests == 1
    finally:
        await bad.aclose()


async def test_slow_provider_gets_a_hedged_request(consumer: Any, provider: NodeProcess,
                                                   image: BuiltImage) -> None:
    client, network, _ = consumer
    slow = BadPeer(image, "slow")
    slow_peer = await slow.start()
    layer = image.layer_digests[0]
    network.add_provider(layer, slow_peer)
    network.add_provider(layer, Peer(provider.ip, provider.port))
    network.add_provider(image.manifest_digests[0], slow_peer)
    network.add_provider(image.manifest_digests[0], Peer(provider.ip, provider.port))
    try:
        response = await client.get(f"/v2/library/demo/blobs/{layer}")
        assert response.status_code == 200
        assert response.content == image.blob_path(layer).read_bytes()
        manifest = await client.get(f"/v2/library/demo/manifests/{image.manifest_digests[0]}")
        assert manifest.status_code == 200
        # Asked, and has not answered yet (it answers only once closed): both came
        # from the other provider without waiting for it.
        assert slow.requests >= 1 and slow.answered == 0
    finally:
        await slow.aclose()


async def test_a_provider_is_asked_at_its_next_address_when_the_first_is_dead(
        consumer: Any, provider: NodeProcess, image: BuiltImage) -> None:
    import socket

    client, network, _ = consumer
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    # One node at two addresses (as a dual-stack node's IPv4 and IPv6 ones): dead first.
    _announce(network, Peer("127.0.0.1", dead, b"\x05" * 32,
                            ((provider.ip, provider.port),)), image)
    head = await client.head("/v2/library/demo/manifests/v1?ns=docker.io")
    assert head.status_code == 200 and head.headers["x-spegel-source"] == "peer"
    layer = image.layer_digests[0]
    blob = await client.get(f"/v2/library/demo/blobs/{layer}")
    assert blob.status_code == 200 and blob.content == image.blob_path(layer).read_bytes()
