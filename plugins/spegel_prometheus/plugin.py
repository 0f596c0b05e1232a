"""The plugin hooks: a Prometheus sink per node, HTTP metrics on the mirror, and
``/metrics`` and ``/debug`` on the metrics address."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from spegel_core import hookimpl
from spegel_core.config import SpegelConfig
from spegel_core.registries import MetricsRegistry
from spegel_core.view import NodeView
from spegel_prometheus.debug import render
from spegel_prometheus.http import HttpMetricsMiddleware
from spegel_prometheus.metrics import PrometheusSink

__all__ = ["sink_of", "spegel_add_routes", "spegel_register_metrics"]

_NO_STORE = {"Cache-Control": "no-store"}


@hookimpl
def spegel_register_metrics(config: SpegelConfig, registry: MetricsRegistry) -> None:
    """Give the node its own :class:`PrometheusSink` (its own CollectorRegistry)."""
    registry.add(PrometheusSink())


def sink_of(node: NodeView) -> PrometheusSink | None:
    """The node's Prometheus sink, if this plugin registered one."""
    return next((s for s in node.metrics_sinks if isinstance(s, PrometheusSink)), None)


@hookimpl
def spegel_add_routes(app: FastAPI, config: SpegelConfig, node: NodeView,
                      metrics_app: FastAPI) -> None:
    """HTTP metrics middleware on the mirror; ``/metrics`` and ``/debug`` on the metrics app."""
    sink = sink_of(node)
    if sink is None:
        return
    app.add_middleware(HttpMetricsMiddleware, sink=sink)
    if node.router_name is not None:
        sink.watch_penalties(lambda: len(node.penalties()))
    metrics_addr = str(config.core.metrics_addr)

    async def metrics() -> Response:
        return Response(sink.exposition(), media_type=CONTENT_TYPE_LATEST, headers=_NO_STORE)

    async def debug() -> HTMLResponse:
        return HTMLResponse(render(node, sink.recent, metrics_addr=metrics_addr),
                            headers=_NO_STORE)

    metrics_app.add_api_route("/metrics", metrics, methods=["GET"],
                              summary="Prometheus metrics of this node")
    metrics_app.add_api_route("/debug", debug, methods=["GET"],
                              summary="This node's state, for people")
