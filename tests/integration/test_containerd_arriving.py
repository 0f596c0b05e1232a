"""The containerd store's arriving content against real containerd ingests.

A real ``ctr images pull`` goes through a throttled upstream (the test kit's proxy in
front of docker-registry), so each layer stays in containerd's ingest directory long
enough to be seen, read while it grows, committed, abandoned or removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spegel_containerd.ingest import parse_ref
from spegel_containerd.store import ContainerdStore
from spegel_core.errors import ArrivingAborted, BlobUnknown
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.protocols import ArrivingStore, ContentStore, StoreEvent, StoreEventKind
from spegel_core.testing.arriving_conformance import ArrivingStoreConformance, ArrivingWriter
from spegel_core.testing.containerd import ContainerdDaemon
from spegel_core.testing.throttle import ThrottledProxy
from spegel_core.testing.upstream import UpstreamRegistry

LAYER = 12 * 2**20
RATE = 16e6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Upstream:
    proxy: ThrottledProxy
    image: BuiltImage
    reference: str
    hosts: Path

    @property
    def layer(self) -> str:
        return self.image.layer_digests[0]


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    registry = UpstreamRegistry(tmp_path / "upstream", port=_free_port()).start()
    try:
        with ThrottledProxy(registry.host, registry.port, RATE) as proxy:
            reference = f"{proxy.address}/library/demo:v1"
            image = build_image(tmp_path / "layout", reference, layer_sizes=(LAYER,), seed=21,
                                platforms=(("linux", "amd64"),))
            registry.push_layout(image.layout_dir, reference, "library/demo:v1")
            hosts = tmp_path / "hosts"
            (hosts / proxy.address).mkdir(parents=True)
            (hosts / proxy.address / "hosts.toml").write_text(
                f'server = "http://{proxy.address}"\n[host."http://{proxy.address}"]\n'
                '  capabilities = ["pull", "resolve"]\n')
            yield Upstream(proxy, image, reference, hosts)
    finally:
        registry.stop()


async def start_pull(daemon: ContainerdDaemon, up: Upstream) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ctr", "--address", str(daemon.socket), "-n", daemon.namespace, "images", "pull",
        "--platform", "linux/amd64", "--hosts-dir", str(up.hosts), "--plain-http",
        up.reference, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


async def next_event(events: AsyncIterator[StoreEvent], kind: StoreEventKind, key: str,
                     within: float = 20.0) -> StoreEvent:
    async with asyncio.timeout(within):
        async for event in events:
            if event.kind is kind and event.key == key:
                return event
    raise AssertionError("event stream ended")


@pytest.fixture
async def store(containerd_daemon: ContainerdDaemon) -> AsyncIterator[ContainerdStore]:
    async with ContainerdStore(containerd_daemon.socket, containerd_daemon.namespace,
                               containerd_daemon.content_path, watch_ingests=True,
                               arriving_stall_timeout=10.0) as opened:
        yield opened


async def test_an_ingest_is_arriving_readable_as_it_grows_then_committed(
    store: ContainerdStore, containerd_daemon: ContainerdDaemon, upstream: Upstream
) -> None:
    assert isinstance(store, ArrivingStore)
    events = store.subscribe()
    pull = await start_pull(containerd_daemon, upstream)
    await next_event(events, StoreEventKind.CONTENT_ARRIVING, upstream.layer)
    assert upstream.layer in await store.list_arriving()
    reader = await store.open_arriving(upstream.layer)
    assert reader.size == LAYER or reader.size > LAYER  # gzip of random bytes grows a little
    hasher, position, wakeups = hashlib.sha256(), 0, 0
    try:
        while position < reader.size:
            available = await reader.wait(position, 10.0)
            wakeups += 1
            data = await reader.read(position, available - position)
            hasher.update(data)
            position += len(data)
    finally:
        await reader.aclose()
    assert f"sha256:{hasher.hexdigest()}" == upstream.layer
    assert 1 < wakeups < reader.size // 4096, "the reader followed the file, not one read"
    await next_event(events, StoreEventKind.CONTENT_CREATED, upstream.layer)
    assert await pull.wait() == 0
    assert await store.list_arriving() == []
    info = await store.stat(upstream.layer)
    assert info.path is not None and info.size == reader.size
    # Just committed: still offered whole for a moment (containerd's metadata may lag).
    late = await store.open_arriving(upstream.layer)
    try:
        assert await late.wait(0, 1.0) == reader.size
    finally:
        await late.aclose()


async def test_a_killed_pull_stops_arriving_and_cuts_readers(
    store: ContainerdStore, containerd_daemon: ContainerdDaemon, upstream: Upstream
) -> None:
    events = store.subscribe()
    pull = await start_pull(containerd_daemon, upstream)
    await next_event(events, StoreEventKind.CONTENT_ARRIVING, upstream.layer)
    reader = await store.open_arriving(upstream.layer)
    try:
        first = await reader.wait(0, 10.0)
        pull.send_signal(signal.SIGKILL)
        await pull.wait()
        await next_event(events, StoreEventKind.ARRIVING_ENDED, upstream.layer)
        assert upstream.layer not in await store.list_arriving()
        with pytest.raises(ArrivingAborted):
            position = first
            while True:  # what was written is readable; then the stream is cut
                position = await reader.wait(position, 10.0)
        assert position < reader.size
    finally:
        await reader.aclose()
    # A retry writes to the same ingest again: it is arriving again, then committed.
    retry = await start_pull(containerd_daemon, upstream)
    await next_event(events, StoreEventKind.CONTENT_ARRIVING, upstream.layer)
    await next_event(events, StoreEventKind.CONTENT_CREATED, upstream.layer)
    assert await retry.wait() == 0


async def test_a_removed_ingest_cuts_readers_at_once(
    store: ContainerdStore, containerd_daemon: ContainerdDaemon, upstream: Upstream
) -> None:
    events = store.subscribe()
    pull = await start_pull(containerd_daemon, upstream)
    await next_event(events, StoreEventKind.CONTENT_ARRIVING, upstream.layer)
    reader = await store.open_arriving(upstream.layer)
    try:
        await reader.wait(0, 10.0)
        assert reader.ingest.path.is_dir()
        shutil.rmtree(reader.ingest.path)  # what containerd does when a pull fails
        await next_event(events, StoreEventKind.ARRIVING_ENDED, upstream.layer)
        async with asyncio.timeout(5):
            with pytest.raises(ArrivingAborted):
                position = 0
                while True:
                    position = await reader.wait(position, 10.0)
    finally:
        await reader.aclose()
    assert await pull.wait() != 0  # the commit finds no data: the pull fails


async def test_without_watching_ingests_nothing_is_arriving(
    containerd_daemon: ContainerdDaemon,
) -> None:
    async with ContainerdStore(containerd_daemon.socket, containerd_daemon.namespace,
                               containerd_daemon.content_path) as plain:
        assert await plain.list_arriving() == []
        with pytest.raises(BlobUnknown):
            await plain.open_arriving("sha256:" + "a" * 64)


class IngestFiles:
    """Writes an ingest the way containerd lays it out (ref, total, data; rename at commit)."""

    def __init__(self, content_path: Path, namespace: str, data: bytes) -> None:
        self.content_path = content_path
        self.digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        ref = f"{namespace}/1/layer-{self.digest}"
        self.path = content_path / "ingest" / hashlib.sha256(ref.encode()).hexdigest()
        self.path.mkdir(parents=True)
        (self.path / "ref").write_text(ref)
        (self.path / "total").write_text(str(len(data)))
        self.file = open(self.path / "data", "wb")  # noqa: SIM115 - closed at commit/abort

    async def append(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    async def commit(self) -> None:
        self.file.close()
        blobs = self.content_path / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        (self.path / "data").rename(blobs / self.digest.partition(":")[2])
        shutil.rmtree(self.path)

    async def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        shutil.rmtree(self.path, ignore_errors=True)


class TestContainerdArrivingConformance(ArrivingStoreConformance):
    @pytest.fixture
    async def arriving_store(self, store: ContainerdStore) -> ContainerdStore:
        return store

    async def begin(self, store: ContentStore, data: bytes) -> ArrivingWriter:
        assert isinstance(store, ContainerdStore) and store.content_path is not None
        return IngestFiles(store.content_path, store.namespace, data)


async def test_an_ingest_left_by_a_dead_pull_is_not_arriving_until_written_again(
    containerd_daemon: ContainerdDaemon,
) -> None:
    data = b"x" * 5000
    ingest = IngestFiles(containerd_daemon.content_path, containerd_daemon.namespace, data)
    await ingest.append(data[:100])
    old = time.time() - 3600
    os.utime(ingest.path / "data", (old, old))
    async with ContainerdStore(containerd_daemon.socket, containerd_daemon.namespace,
                               containerd_daemon.content_path, watch_ingests=True) as store:
        assert await store.list_arriving() == []
        with pytest.raises(BlobUnknown):
            await store.open_arriving(ingest.digest)
        events = store.subscribe()
        await ingest.append(data[100:200])  # a retry resumes it
        await next_event(events, StoreEventKind.CONTENT_ARRIVING, ingest.digest)
        assert await store.list_arriving() == [ingest.digest]
        await ingest.abort()
        await next_event(events, StoreEventKind.ARRIVING_ENDED, ingest.digest)


def test_ingest_refs() -> None:
    digest = "sha256:" + "ab" * 32
    assert parse_ref(f"k8s.io/1/layer-{digest}") == ("k8s.io", digest)
    assert parse_ref(f"default/12/manifest-{digest}\n") == ("default", digest)
    assert parse_ref("k8s.io/1/layer-sha256:short") is None
    assert parse_ref(f"{digest}") is None
