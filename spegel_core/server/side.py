"""A second listener in the mirror's event loop (the metrics address).

The mirror's uvicorn server owns the signals and the lifespan; this one only
serves an extra ASGI app on its own socket, starts before the mirror (so
``/metrics`` answers while the store is still starting) and stops after it (so
the figures stay visible while in-flight responses drain).

A listener that cannot bind is logged as an error and left out: metrics are
worth less than a working mirror, and the node keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from spegel_core.config import Address
from spegel_core.server.listen import listen_socket

log = logging.getLogger(__name__)


class _QuietServer(uvicorn.Server):
    """uvicorn's server without signal handling: the mirror's server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class SideListener:
    """Serve ``app`` on ``address`` next to the main server, in the same event loop."""

    def __init__(self, app: ASGIApp, address: Address, *, name: str = "metrics") -> None:
        self.address = address
        self.name = name
        self.server = _QuietServer(uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, http="httptools",
            timeout_graceful_shutdown=1, timeout_keep_alive=30, server_header=False,
            limit_concurrency=64,
        ))
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> socket.socket | None:
        """The listening socket, or None (logged) when the address cannot be used."""
        try:
            return listen_socket(self.address, backlog=128)
        except OSError as exc:
            log.error("the %s endpoint cannot listen on %s (%s); the mirror runs without it",
                      self.name, self.address, exc)
            return None

    async def start(self) -> bool:
        """Listen and serve in the background; False (logged) when the address is taken."""
        sock = self.bind()
        if sock is None:
            return False
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]),
                                         name=f"{self.name}-listener")
        log.info("%s endpoint on %s", self.name, self.address)
        return True

    async def stop(self) -> None:
        """Stop serving and wait for the listener to end; idempotent."""
        if self._task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.shield(self._task)
        except Exception:  # the side listener never decides how the process ends
            log.exception("the %s listener failed while stopping", self.name)
        self._task = None

    def __repr__(self) -> str:
        state = "serving" if self._task is not None and not self._task.done() else "idle"
        return f"<SideListener {self.name} {self.address} {state}>"
