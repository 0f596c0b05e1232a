"""Serve a FastAPI app with uvicorn (uvloop + httptools + zero-copy add-on)."""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from spegel_core.config import Address
from spegel_core.server.limits import ConnectionLimits, raise_open_files
from spegel_core.server.listen import listen_socket
from spegel_core.server.side import SideListener
from spegel_core.server.zerocopy import (
    check_uvicorn_compatible,
    limited_protocol,
)

log = logging.getLogger(__name__)


def uvicorn_config(app: FastAPI, address: Address, *, drain_timeout: float,
                   loop: str = "uvloop") -> uvicorn.Config:
    """The server of the mirror: connection limits from ``app.state.connection_limits``."""
    check_uvicorn_compatible()
    files = raise_open_files()
    log.debug("open-file limit %d", files)
    limits = getattr(app.state, "connection_limits", None)
    return uvicorn.Config(
        app,
        host=address.bind_host,
        port=address.port,
        loop=loop,
        http=limited_protocol(limits if isinstance(limits, ConnectionLimits)
                              else ConnectionLimits()),
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(drain_timeout)),
        timeout_keep_alive=30,
        # No limit_concurrency: it counts idle connections too and answers 503 beyond
        # it. Requests in flight and connections are bounded by the protocol instead
        # (spegel_core.server.limits: 429, a share kept for the node's own clients).
        limit_concurrency=None,
        backlog=4096,
        server_header=False,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that SIGTERM ends in exit code 0 after draining.

    uvicorn re-raises the signal it caught once it has shut down, which would
    make a clean, drained stop look like a crash (exit -15) to Kubernetes.
    """

    #: Extra listener (the metrics address) started before and stopped after this one.
    side: SideListener | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve, with the side listener started before and stopped after."""
        if self.side is not None:
            await self.side.start()
        try:
            await super().serve(sockets)
        finally:
            if self.side is not None:
                await self.side.stop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Begin the graceful shutdown; a SIGTERM is not re-raised once drained."""
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if sig == signal.SIGTERM and captured and captured[-1] == sig:
            captured.pop()
            log.info("SIGTERM: draining in-flight responses")


def serve(app: FastAPI, address: Address, *, drain_timeout: float,
          metrics: tuple[FastAPI, Address] | None = None) -> int:
    """Run until SIGTERM/SIGINT; in-flight responses get ``drain_timeout`` seconds. Returns 0.

    ``metrics`` is an app served on its own address in the same event loop.
    """
    server = DrainingServer(uvicorn_config(app, address, drain_timeout=drain_timeout))
    if metrics is not None:
        server.side = SideListener(*metrics)
    try:
        sock = listen_socket(address)  # ":PORT": dual-stack where the kernel allows
    except OSError as exc:
        log.error("the mirror could not listen on %s: %s", address, exc)
        return 1
    server.run(sockets=[sock])
    if not server.started:
        log.error("the mirror could not start on %s", address)
        return 1
    return 0
