"""The metrics address: a second listener in the mirror's event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from spegel_core import hookimpl
from spegel_core.config import Address, SpegelConfig
from spegel_core.mirror.app import create_app, metrics_app_of
from spegel_core.plugin_manager import PluginManager
from spegel_core.server.side import SideListener
from spegel_core.testing.fakes import MemoryContentStore
from spegel_core.view import NodeView


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _hello_app() -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> PlainTextResponse:
        return PlainTextResponse("hi")

    return app


async def test_serves_beside_and_stops() -> None:
    port = _free_port()
    listener = SideListener(_hello_app(), Address("127.0.0.1", port))
    assert await listener.start()
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/hello")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.01)
            assert response.text == "hi"
    finally:
        await asyncio.wait_for(listener.stop(), 5)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # released


async def test_a_taken_address_is_logged_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = SideListener(_hello_app(), Address("127.0.0.1", port))
        with caplog.at_level(logging.ERROR):
            assert not await listener.start()
        await listener.stop()  # nothing to stop: fine
    assert "cannot listen" in caplog.text and "runs without it" in caplog.text


def test_metrics_app_only_when_a_plugin_adds_a_route(
        spegel_pm: PluginManager, make_config: Callable[..., SpegelConfig],
        register_plugin: Callable[[object, str], None]) -> None:
    config = make_config(content_store="memory")
    spegel_pm.block("prometheus")
    spegel_pm.unregister("prometheus")
    assert metrics_app_of(create_app(config, spegel_pm, store=MemoryContentStore())) is None
    seen: list[NodeView] = []

    class Page:
        @hookimpl
        def spegel_add_routes(self, node: NodeView, metrics_app: FastAPI) -> None:
            seen.append(node)

            @metrics_app.get("/page")
            async def page() -> PlainTextResponse:
                return PlainTextResponse(node.store_name)

    register_plugin(Page(), "page")
    app = create_app(config, spegel_pm, store=MemoryContentStore())
    metrics_app = metrics_app_of(app)
    assert metrics_app is not None and len(seen) == 1
    assert isinstance(seen[0], NodeView) and seen[0].config is app.state.node.config
    assert "/page" not in {getattr(route, "path", "") for route in app.routes}
