"""The application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from spegel_core import __version__
from spegel_core.config import SpegelConfig
from spegel_core.mirror import health, routes_v2
from spegel_core.mirror.edge import install_edge
from spegel_core.mirror.errors import install_error_handlers
from spegel_core.mirror.openapi import install_openapi
from spegel_core.mirror.pulls import PullService
from spegel_core.mirror.service import MirrorService
from spegel_core.node import Node
from spegel_core.plugin_manager import PluginManager
from spegel_core.protocols import ContentStore
from spegel_core.server.zerocopy import ConnectionLimits


def create_app(config: SpegelConfig, pm: PluginManager, *,
               store: ContentStore | None = None) -> FastAPI:
    """Build the mirror for ``config``.

    Provider hooks run here, so invalid settings raise before any server starts;
    the store and router are opened in the lifespan and closed through an
    ``AsyncExitStack``.
    """
    node = Node.build(config, pm, store=store)
    service = MirrorService(config, node.store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await node.open(stack)
            yield

    app = FastAPI(
        title="spegel mirror",
        version=__version__,
        description="Pull-only OCI distribution API served from this node and its peers.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.node = node
    app.state.service = service
    app.state.pulls = PullService(service, node.store, node.peers, node.metrics,
                                  arriving=node.config.core.advertise_arriving,
                                  flight=node.flight)
    app.state.connection_limits = ConnectionLimits(
        max_client_connections=config.core.mirror_max_client_connections,
        header_timeout=config.core.mirror_header_timeout)
    install_error_handlers(app)
    install_edge(app, config, node.metrics)  # --registry-filters, OCI-Namespace, basic auth
    install_openapi(app)
    app.include_router(health.router)
    app.include_router(routes_v2.router)
    metrics_app = FastAPI(title="spegel metrics", version=__version__, docs_url=None,
                          redoc_url=None, openapi_url=None)
    app.state.metrics_app = metrics_app
    pm.add_routes(app, config, node.view(), metrics_app)
    return app


def metrics_app_of(app: FastAPI) -> FastAPI | None:
    """The application to serve on ``--metrics-addr``, or None when no plugin added a route."""
    metrics_app = getattr(app.state, "metrics_app", None)
    if isinstance(metrics_app, FastAPI) and metrics_app.routes:
        return metrics_app
    return None
