"""Requests in flight beyond the server's limit get a fast 429, and the node's own
clients keep a reserved share (a real uvicorn server with the mirror's protocol, on
loopback)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from spegel_core.server.limits import ConnectionLimits, is_own_client
from spegel_core.server.zerocopy import limited_protocol

SERVER = "127.0.41.100"


class SlowApp:
    """``/slow`` waits for :attr:`release`; anything else answers 200 at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/slow":
            self.waiting.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def server() -> AsyncIterator[tuple[SlowApp, int]]:
    app = SlowApp()
    limits = ConnectionLimits(max_requests=2, reserved_own=1)
    config = uvicorn.Config(app, host=SERVER, port=0, http=limited_protocol(limits),
                            lifespan="off", log_config=None, access_log=False,
                            limit_concurrency=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, no event)
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield app, port
    finally:
        app.release.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def get(port: int, path: str, source: str | None
              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        SERVER, port, local_addr=(source, 0) if source else None)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


async def test_beyond_the_limit_a_fast_429_and_the_node_keeps_its_share(
        server: tuple[SlowApp, int]) -> None:
    app, port = server
    slow_reader, slow_writer = await get(port, "/slow", "127.0.41.1")
    async with asyncio.timeout(5):
        await app.waiting.wait()
    # One request in flight fills the share of clients other than the node: 429.
    reader, writer = await get(port, "/fast", "127.0.41.2")
    status, headers, body = await response(reader)
    writer.close()
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    # The node's own client (its default loopback source) still gets through.
    reader, writer = await get(port, "/fast", None)
    status, _, body = await response(reader)
    writer.close()
    assert (status, body) == (200, b"ok")
    app.release.set()
    status, _, _ = await response(slow_reader)
    slow_writer.close()
    assert status == 200
    # With nothing in flight, other clients are served again.
    reader, writer = await get(port, "/fast", "127.0.41.2")
    assert (await response(reader))[0] == 200
    writer.close()


@pytest.mark.parametrize(("client", "local", "own"), [
    ("127.0.0.1", "127.0.0.9", True),
    ("10.1.2.3", "10.1.2.3", True),
    ("10.1.2.4", "10.1.2.3", False),
    ("127.0.40.1", "127.0.0.9", False),
    (None, None, True),
])
def test_own_clients(client: str | None, local: str | None, own: bool) -> None:
    assert is_own_client(client, local) is own
