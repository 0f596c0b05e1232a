"""ASGI middleware for Spegel's HTTP metrics on the mirror.

``http_request_duration_seconds`` and ``http_response_size_bytes`` by
``{handler, method, code}``, ``http_requests_inflight`` by ``{handler}`` (a request in
flight has no code yet, as in Spegel). The handler is ``/v2/*`` for the registry API
(Spegel's label), the route's path for other routes, ``other`` for anything else,
so clients cannot grow the label set. The size counts the bytes of the body sent,
zero-copy ones included.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spegel_core.server.extension import ZEROCOPY_MESSAGE

if TYPE_CHECKING:
    from spegel_prometheus.metrics import PrometheusSink

V2_HANDLER = "/v2/*"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def handler_label(scope: Scope) -> str:
    """The label of the handler that answered ``scope`` (after routing)."""
    path: str = scope.get("path", "")
    if path == "/v2" or path.startswith("/v2/"):
        return V2_HANDLER
    route = scope.get("route")
    route_path = getattr(route, "path", None)
    return route_path if isinstance(route_path, str) else "other"


def _before_routing(scope: Scope) -> str:
    path: str = scope.get("path", "")
    return V2_HANDLER if path == "/v2" or path.startswith("/v2/") else path


class HttpMetricsMiddleware:
    """Times every HTTP request of the wrapped app and counts its response bytes."""

    def __init__(self, app: ASGIApp, sink: PrometheusSink) -> None:
        self.app = app
        self.sink = sink
        self._known: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, recording its duration, status and response bytes by handler."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope.get("method", "GET")
        method = method if method in _METHODS else "other"
        # In flight is counted before routing, so only handlers known to exist get a label.
        early = _before_routing(scope)
        inflight = self.sink.http_inflight.labels(
            early if early == V2_HANDLER or early in self._known else "other")
        inflight.inc()
        status = 500
        size = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, size
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
            elif kind == "http.response.body":
                size += len(message.get("body", b""))
            elif kind == ZEROCOPY_MESSAGE:
                await send(message)
                # The bytes the server reports it sent (a client may have gone away).
                moved = getattr(message.get("report"), "moved", None)
                size += int(message["count"]) if moved is None else int(moved)
                return
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            inflight.dec()
            handler = handler_label(scope)
            if handler != "other":
                self._known.add(handler)
            code = str(status)
            self.sink.http_duration.labels(handler, method, code).observe(
                time.perf_counter() - started)
            self.sink.http_size.labels(handler, method, code).observe(size)
