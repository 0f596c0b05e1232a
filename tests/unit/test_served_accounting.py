"""Bytes served and request duration are counted when the response has finished.

A response is built before a byte of it is sent; what counts as served is what the
client received in a response that completed. An aborted response (the client went
away, the store or a peer stopped short) is reported as not complete and adds no
bytes served. Through the app (bytes through Python) and for the zero-copy messages
(a file, a spliced socket) the server reports on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from spegel_core import hookimpl
from spegel_core.config import SpegelConfig
from spegel_core.errors import BlobUnknown
from spegel_core.mirror.metered import MeteredResponse, Outcome
from spegel_core.mirror.responses import ZEROCOPY_EXTENSION, ZEROCOPY_MESSAGE, RelayResponse
from spegel_core.protocols import BytesServed, MirrorRequest, Source
from spegel_core.server.splice import SpliceReport, Stop
from spegel_core.testing.fakes import MemoryContentStore, RecordingSink

DATA = bytes(range(256)) * 4096 * 3  # 3 MiB: three chunks of the memory store


class GatedStore(MemoryContentStore):
    """Reads stop after the first chunk until ``release`` is set; or end early."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()
        self.short = False

    async def read(self, digest: str, offset: int = 0,
                   length: int | None = None) -> AsyncIterator[bytes]:
        first = True
        async for chunk in super().read(digest, offset, length):
            yield chunk
            if first:
                first = False
                self.reading.set()
                await asyncio.wait_for(self.release.wait(), 10)
                if self.short:
                    return  # the store ends before the recorded size


@pytest.fixture
async def app_client(mirror_client: Callable[..., Any],
                     make_config: Callable[..., SpegelConfig],
                     register_plugin: Callable[[object, str], None],
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, GatedStore, RecordingSink, str]]:
    sink = RecordingSink()

    class Metrics:
        @hookimpl
        def spegel_register_metrics(self, config: SpegelConfig, registry: Any) -> None:
            registry.add(sink)

    register_plugin(Metrics(), "recording-metrics")
    store = GatedStore()
    digest = store.add_blob(DATA)
    async with mirror_client(make_config(content_store="memory"), store) as client:
        yield client, store, sink, digest


async def test_a_response_is_counted_when_its_last_byte_is_sent(app_client: Any) -> None:
    client, store, sink, digest = app_client
    task = asyncio.ensure_future(client.get(f"/v2/library/demo/blobs/{digest}"))
    await asyncio.wait_for(store.reading.wait(), 10)
    # The response was built and its first chunk sent: nothing is counted yet.
    assert sink.of_type(MirrorRequest) == [] and sink.of_type(BytesServed) == []
    store.release.set()
    response = await asyncio.wait_for(task, 10)
    assert response.status_code == 200 and response.content == DATA
    [request] = sink.of_type(MirrorRequest)
    assert request.complete and request.bytes == len(DATA) and request.status == 200
    assert request.source is Source.LOCAL
    assert [e.bytes for e in sink.of_type(BytesServed)] == [len(DATA)]


async def test_an_aborted_response_is_not_counted_as_served(app_client: Any) -> None:
    client, store, sink, digest = app_client
    store.short = True
    store.release.set()
    # In-process, the transport re-raises the abort (Starlette wraps the OCI error: the
    # response had started); a real server closes the connection (a short read).
    with pytest.raises((RuntimeError, BlobUnknown)):
        await client.get(f"/v2/library/demo/blobs/{digest}")
    [request] = sink.of_type(MirrorRequest)
    assert not request.complete and 0 < request.bytes < len(DATA)
    assert sink.of_type(BytesServed) == []


async def test_head_counts_no_bytes(app_client: Any) -> None:
    client, _, sink, digest = app_client
    response = await client.head(f"/v2/library/demo/blobs/{digest}")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(DATA)
    [request] = sink.of_type(MirrorRequest)
    assert request.complete and request.bytes == 0 and sink.of_type(BytesServed) == []


class FakeServer:
    """An ASGI server's ``send`` with the zero-copy extension: reports how sends end."""

    def __init__(self, deliver: int) -> None:
        self.deliver = deliver  # bytes the "client" takes before it goes away
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        self.messages.append(message)
        if message["type"] != ZEROCOPY_MESSAGE:
            return
        moved = min(self.deliver, int(message["count"]))
        self.deliver -= moved
        report = message["report"]
        report.moved = moved
        report.stop = Stop.DONE if moved == message["count"] else Stop.DESTINATION_GONE


class FileMessage:
    """A response that sends one zero-copy file message (the server ends the body)."""

    status_code = 200
    raw_headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": ZEROCOPY_MESSAGE, "file": 0, "offset": 0, "count": 1000})


@pytest.mark.parametrize("deliver, complete", [(1000, True), (400, False)])
async def test_zero_copy_file_sends_count_what_the_server_sent(deliver: int,
                                                               complete: bool) -> None:
    outcomes: list[Outcome] = []
    server = FakeServer(deliver)
    response = MeteredResponse(FileMessage(), 0.0, outcomes.append)  # type: ignore[arg-type]
    scope = {"type": "http", "method": "GET", "extensions": {ZEROCOPY_EXTENSION: {}}}
    await response(scope, None, server.send)  # type: ignore[arg-type]
    [outcome] = outcomes
    assert (outcome.sent, outcome.complete, outcome.status) == (deliver, complete, 200)
    assert isinstance(server.messages[1]["report"], SpliceReport)


@pytest.mark.parametrize("deliver, complete", [(3000, True), (2500, False)])
async def test_spliced_relays_count_what_reached_the_client(deliver: int,
                                                            complete: bool) -> None:
    async def relay(sink: Any) -> None:
        await sink.write(b"x" * 1000)
        moved, why = await sink.splice(7, 2000)
        assert (moved, why) == (2000, "done")

    outcomes: list[Outcome] = []
    server = FakeServer(deliver - 1000)
    inner = RelayResponse(relay, 3000, source_timeout=1.0)
    await MeteredResponse(inner, 0.0, outcomes.append)(
        {"type": "http", "method": "GET"}, None, server.send)  # type: ignore[arg-type]
    [outcome] = outcomes
    assert (outcome.sent, outcome.complete) == (deliver, complete)


def test_the_mirror_decides_nothing_by_assert() -> None:
    """``python -O`` strips asserts: the request path must not depend on them."""
    import ast
    from pathlib import Path

    import spegel_core.mirror

    folder = Path(spegel_core.mirror.__file__).parent
    found = [f"{path.name}:{node.lineno}" for path in sorted(folder.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assert)]
    assert found == []
