"""The peer path with arriving providers, over real HTTP: which provider is asked first,
and resuming when an arriving provider dies mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from spegel_core.config import SpegelConfig
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.protocols import Peer, arriving_key
from spegel_core.testing.fakes import MemoryContentStore, MemoryNetwork, MemoryRouter
from spegel_core.testing.nodes import NodeProcess

REF = "docker.io/library/demo:v1"


@pytest.fixture
def image(tmp_path: Path) -> BuiltImage:
    return build_image(tmp_path / "layout", REF, layer_sizes=(3 * 2**20,),
                       platforms=(("linux", "amd64"),))


@pytest.fixture
def provider(spegel_node: Callable[..., NodeProcess], image: BuiltImage) -> NodeProcess:
    return spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                       str(image.layout_dir))


class DyingPeer:
    """Answers 200 with the whole length, sends the first half of the blob, then dies."""

    def __init__(self, image: BuiltImage) -> None:
        self.image = image
        self.server: asyncio.Server | None = None
        self.requests = 0

    async def start(self) -> Peer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return Peer("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        request = await reader.readuntil(b"\r\n\r\n")
        digest = request.split(b" ")[1].decode().split("/")[-1].split("?")[0]
        data = self.image.blob_path(digest).read_bytes()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nDocker-Content-Digest: %s\r\n\r\n"
                     % (len(data), digest.encode()) + data[: len(data) // 2])
        await writer.drain()
        writer.transport.abort()

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def consumer(
    mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
    register_plugin: Callable[[object, str], None],
) -> AsyncIterator[tuple[httpx.AsyncClient, MemoryNetwork]]:
    from spegel_core import hookimpl

    network = MemoryNetwork()

    class Wiring:
        @hookimpl
        def spegel_make_router(self, config: SpegelConfig, discovery: Any, metrics: Any) -> Any:
            return MemoryRouter(network, Peer("127.0.0.1", 1))

    register_plugin(Wiring(), "wiring")
    # Issue 15's peer path on its own: with single flight (the default) a node that finds
    # only arriving providers claims the digest instead, and the rendezvous assigns it
    # an arriving parent (docs/fleet.md; tests/e2e/test_fleet_single_flight.py).
    config = make_config(content_store="memory", router="memory",
                         mirror_resolve_timeout="200ms", single_flight=False)
    async with mirror_client(config, MemoryContentStore()) as client:
        yield client, network


async def test_a_committed_provider_is_asked_before_an_arriving_one(
    consumer: Any, provider: NodeProcess, image: BuiltImage
) -> None:
    client, network = consumer
    layer = image.layer_digests[0]
    dying = DyingPeer(image)
    network.add_provider(arriving_key(layer), await dying.start())
    network.add_provider(layer, Peer(provider.ip, provider.port))
    try:
        response = await client.get(f"/v2/library/demo/blobs/{layer}")
        assert response.status_code == 200
        assert response.content == image.blob_path(layer).read_bytes()
        assert dying.requests == 0
    finally:
        await dying.aclose()


async def test_a_dying_arriving_provider_is_resumed_from_the_next(
    consumer: Any, provider: NodeProcess, image: BuiltImage
) -> None:
    client, network = consumer
    layer = image.layer_digests[0]
    dying = DyingPeer(image)
    network.add_provider(arriving_key(layer), await dying.start())
    network.add_provider(arriving_key(layer), Peer(provider.ip, provider.port))
    try:
        response = await client.get(f"/v2/library/demo/blobs/{layer}")
        assert response.status_code == 200  # verified whole, across the two providers
        assert response.content == image.blob_path(layer).read_bytes()
        assert dying.requests == 1
    finally:
        await dying.aclose()


async def test_arriving_providers_are_not_asked_with_advertise_arriving_false(
    mirror_client: Callable[..., Any], make_config: Callable[..., SpegelConfig],
    register_plugin: Callable[[object, str], None], provider: NodeProcess, image: BuiltImage,
) -> None:
    from spegel_core import hookimpl

    network = MemoryNetwork()

    class Wiring:
        @hookimpl
        def spegel_make_router(self, config: SpegelConfig, discovery: Any, metrics: Any) -> Any:
            return MemoryRouter(network, Peer("127.0.0.1", 1))

    register_plugin(Wiring(), "wiring")
    layer = image.layer_digests[0]
    network.add_provider(arriving_key(layer), Peer(provider.ip, provider.port))
    config = make_config(content_store="memory", router="memory", advertise_arriving=False)
    async with mirror_client(config, MemoryContentStore()) as client:
        assert (await client.get(f"/v2/library/demo/blobs/{layer}")).status_code == 404
