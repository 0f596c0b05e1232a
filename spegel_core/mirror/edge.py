"""What every registry API request goes through before its route (ASGI middleware).

- :class:`RegistryEdgeMiddleware`: ``--registry-filters`` on every manifest and blob
  request, tags and digests alike (a filtered one is a fast 404, so containerd goes
  upstream), and the ``OCI-Namespace`` response header: the registry the request was
  answered for (``ns``, or ``docker.io`` without one), as the distribution spec asks of
  a registry that serves several namespaces.
- :class:`~spegel_core.mirror.auth.BasicAuthMiddleware` with ``--basic-auth-dir``.

Both only read the path, the query and the headers, and pass every other message
(zero-copy ones included) through untouched.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spegel_core.compat import filter_patterns
from spegel_core.config import SpegelConfig
from spegel_core.credentials import load_credentials
from spegel_core.filters import RegistryFilter
from spegel_core.mirror.auth import BasicAuthMiddleware
from spegel_core.mirror.errors import oci_error_response
from spegel_core.oci.reference import DEFAULT_REGISTRY
from spegel_core.protocols import MetricsSink, MirrorRequest, Source
from spegel_core.registry_urls import registry_host

NAMESPACE_HEADER = "OCI-Namespace"
_PATH = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)")
_KINDS = {"manifests": ("manifest", "MANIFEST_UNKNOWN"), "blobs": ("blob", "BLOB_UNKNOWN")}


def _registry(scope: Scope) -> str | None:
    """The request's registry (``ns``), or None when ``ns`` is invalid (the route says so)."""
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query).get("ns") if query else None
    if not values or not values[0]:
        return DEFAULT_REGISTRY
    try:
        return registry_host(values[0])
    except ValueError:
        return None


class RegistryEdgeMiddleware:
    """``--registry-filters`` on every request and the ``OCI-Namespace`` header."""

    def __init__(self, app: ASGIApp, registry_filter: RegistryFilter,
                 metrics: MetricsSink | None = None) -> None:
        self.app = app
        self.filter = registry_filter
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer filtered references with 404; add ``OCI-Namespace`` to other pull answers."""
        match = _PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        registry = _registry(scope) if match else None
        if match is None or registry is None:
            await self.app(scope, receive, send)
            return
        name, kind, reference = match["name"], match["kind"], match["reference"]
        tag = reference if kind == "manifests" and ":" not in reference else None
        namespace = (NAMESPACE_HEADER.lower().encode(), registry.encode())
        if self.filter and self.filter.matches(registry, name, tag):
            started = time.perf_counter()
            label, code = _KINDS[kind]
            response = oci_error_response(
                404, code, "not served: the reference matches --registry-filters",
                {NAMESPACE_HEADER: registry})
            await response(scope, receive, send)
            if self.metrics is not None:
                self.metrics.emit(MirrorRequest(
                    registry=registry, kind=label, source=Source.NONE, status=404, bytes=0,
                    duration_s=time.perf_counter() - started,
                    method=scope.get("method", "GET"), path=scope.get("path", "")))
            return

        async def send_with_namespace(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), namespace]}
            await send(message)

        await self.app(scope, receive, send_with_namespace)


def install_edge(app: FastAPI, config: SpegelConfig, metrics: MetricsSink | None = None) -> None:
    """Add the edge middleware to the mirror (auth outermost: checked first)."""
    app.add_middleware(RegistryEdgeMiddleware,
                       registry_filter=RegistryFilter(filter_patterns(config)),
                       metrics=metrics)
    if config.core.basic_auth_dir is not None:
        app.add_middleware(BasicAuthMiddleware,
                           credentials=load_credentials(config.core.basic_auth_dir))
