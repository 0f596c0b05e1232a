"""The plugin hooks: a Prometheus sink per node, and its pages on the metrics address.

The metrics address serves ``/metrics`` and (``--debug-web-enabled``, the default)
``/debug`` and ``/debug/measure``; ``/debug/web/`` is the same page at the Go
original's path.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field

from spegel_core import hookimpl
from spegel_core.config import SettingsRegistry, SpegelConfig, SpegelSettings
from spegel_core.registries import MetricsRegistry
from spegel_core.view import NodeView
from spegel_prometheus.debug import render
from spegel_prometheus.http import HttpMetricsMiddleware
from spegel_prometheus.metrics import PrometheusSink

__all__ = ["PrometheusSettings", "sink_of", "spegel_add_routes", "spegel_add_settings",
           "spegel_register_metrics"]

_NO_STORE = {"Cache-Control": "no-store"}


class PrometheusSettings(SpegelSettings):
    """Settings of the metrics and debug endpoints."""

    debug_web_enabled: bool = Field(
        default=True, description="Serve /debug (and /debug/web/, the Go original's path) "
        "and /debug/measure on the metrics address.")


@hookimpl
def spegel_add_settings(registry: SettingsRegistry) -> None:
    """Declare :class:`PrometheusSettings` (``--debug-web-enabled``)."""
    registry.add(PrometheusSettings, owner="prometheus")


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
        # the gauge counts peer-wide penalties; one key's penalty has a space in its name
        sink.watch_penalties(lambda: sum(' ' not in name for name in node.penalties()))
    metrics_addr = str(config.core.metrics_addr)

    async def metrics() -> Response:
        return Response(sink.exposition(), media_type=CONTENT_TYPE_LATEST, headers=_NO_STORE)

    async def debug() -> HTMLResponse:
        return HTMLResponse(render(node, sink.recent, metrics_addr=metrics_addr),
                            headers=_NO_STORE)

    metrics_app.add_api_route("/metrics", metrics, methods=["GET"],
                              summary="Prometheus metrics of this node")
    if not config.get(PrometheusSettings).debug_web_enabled:
        return
    # measure pulls through the mirror with aiohttp: imported when the pages are made,
    # so that loading the plugin loads no HTTP client (nor its DNS resolver)
    from spegel_prometheus.measure import MeasureError, MeasureGate, render_measurement

    gate = MeasureGate()

    async def measure(image: Annotated[str, Query(max_length=500)] = "",
                      format: Annotated[str, Query(pattern="^(html|json)$")] = "html",
                      ) -> Response:
        if not image:
            if format == "json":
                return JSONResponse({"error": "give ?image=<reference>"}, status_code=400)
            return HTMLResponse(render_measurement(None), headers=_NO_STORE)
        if gate.busy:
            return JSONResponse({"error": "a measurement is already running"},
                                status_code=429, headers={"Retry-After": "5"})
        try:
            result = await gate.run(node, image)
        except MeasureError as exc:
            if format == "json":
                return JSONResponse({"error": str(exc)}, status_code=400)
            return HTMLResponse(render_measurement(None, image, error=str(exc)),
                                status_code=400)
        if format == "json":
            return JSONResponse(result.as_dict(), headers=_NO_STORE)
        return HTMLResponse(render_measurement(result, image), headers=_NO_STORE)

    for path in ("/debug", "/debug/web/"):
        metrics_app.add_api_route(path, debug, methods=["GET"],
                                  summary="This node's state, for people")
    for path in ("/debug/measure", "/debug/web/measure"):
        metrics_app.add_api_route(path, measure, methods=["GET"],
                                  summary="Time a lookup and a pull of one image, blob by blob")
