"""Hook specifications: the extension points of spegel.

Hooks are synchronous and run at start-up (factories and registrations). The
request path never calls a hook: it awaits methods of the objects the provider
hooks returned (see :mod:`spegel_core.protocols`).

Grouped by lifecycle: settings, configure, providers, registries, shutdown.
Third-party plugins are found through the ``spegel`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spegel_core import hookspec

if TYPE_CHECKING:
    from fastapi import FastAPI

    from spegel_core.config import SettingsRegistry, SpegelConfig
    from spegel_core.protocols import ContentStore, Discovery, MetricsSink, Router
    from spegel_core.registries import DiscoveryRegistry, MetricsRegistry
    from spegel_core.view import NodeView


# -- settings ---------------------------------------------------------------
@hookspec
def spegel_add_settings(registry: SettingsRegistry) -> None:
    """Declare the plugin's settings model.

    Called once after all plugins are registered and before the command line is
    parsed. Each field of the pydantic model becomes a ``--flag`` and a
    ``SPEGEL_*`` environment variable; the validated instance is later found with
    ``config.get(Model)``.

    All implementations are called.

    :param registry: call ``registry.add(Model)`` with a pydantic-settings model.
    """


# -- configure ----------------------------------------------------------------
@hookspec
def spegel_configure(config: SpegelConfig) -> None:
    """Perform start-up checks and initialisation after configuration is validated.

    Called once per process, before any provider hook. Raise
    :class:`spegel_core.errors.ConfigError` to refuse a setting.

    All implementations are called.

    :param config: the frozen configuration.
    """


# -- providers ------------------------------------------------------------------
@hookspec(firstresult=True)
def spegel_make_content_store(config: SpegelConfig, metrics: MetricsSink) -> ContentStore | None:
    """Create the content store named by ``--content-store``.

    Called once when a node starts. An implementation returns a (not yet started)
    store if ``config.core.content_store`` names the store it provides, else None.
    The node reports the store's readiness once when it opens it; a store that can
    lose its backend later emits :class:`~spegel_core.protocols.StoreConnection`
    to ``metrics`` at each change.

    Stops at first non-None result. Built-in stores are ``trylast`` so an
    installed plugin can override them.

    :param config: the frozen configuration.
    :param metrics: where the store emits its events (the node's metrics hub).
    :returns: a :class:`~spegel_core.protocols.ContentStore` or None.
    """


@hookspec
def spegel_register_discovery(
    config: SpegelConfig, registry: DiscoveryRegistry, metrics: MetricsSink
) -> None:
    """Register bootstrap-peer sources.

    Called once when a node starts, before the router is made. An implementation
    calls ``registry.add(kind, discovery)`` when ``kind`` is one of
    ``config.core.bootstrap_kind``. Several kinds may be active together; a kind
    registered twice is a :class:`~spegel_core.errors.PluginError`.

    All implementations are called.

    :param config: the frozen configuration.
    :param registry: collects :class:`~spegel_core.protocols.Discovery` objects.
    :param metrics: where sources emit their events (e.g.
        :class:`~spegel_core.protocols.DnsQuery`).
    """


@hookspec(firstresult=True)
def spegel_make_router(
    config: SpegelConfig, discovery: list[Discovery], metrics: MetricsSink
) -> Router | None:
    """Create the router named by ``--router``.

    Called once when a node starts, after discovery is registered. An
    implementation returns a (not yet started) router if ``config.core.router``
    names it, else None.

    Stops at first non-None result. Built-in routers are ``trylast``.

    :param config: the frozen configuration.
    :param discovery: every registered bootstrap source.
    :param metrics: where the router emits its events.
    :returns: a :class:`~spegel_core.protocols.Router` or None.
    """


# -- registries -------------------------------------------------------------------
@hookspec
def spegel_register_metrics(config: SpegelConfig, registry: MetricsRegistry) -> None:
    """Register metrics sinks that receive the typed events of the core.

    Called once when a node starts. An implementation calls ``registry.add(sink)``
    with an object whose ``emit(event)`` must not block. Errors raised by a sink
    are logged and dropped: they never reach a request.

    All implementations are called.

    :param config: the frozen configuration.
    :param registry: collects :class:`~spegel_core.protocols.MetricsSink` objects.
    """


@hookspec
def spegel_add_routes(
    app: FastAPI, config: SpegelConfig, node: NodeView, metrics_app: FastAPI
) -> None:
    """Add routes (and middleware) to the mirror, or routes to the metrics listener.

    Called once while the application is built, after the /v2 routes exist.
    ``metrics_app`` is served on ``--metrics-addr`` beside the mirror, in the same
    process and event loop; it only listens when some plugin adds a route to it.
    Implementations may take any subset of the parameters.

    All implementations are called.

    :param app: the FastAPI mirror application.
    :param config: the frozen configuration.
    :param node: a read-only :class:`~spegel_core.view.NodeView` of the node being
        built (store and router status, advertised keys, penalised peers, metrics
        sinks), for pages that show its state; the node starts later, in the
        mirror's lifespan, so read the view inside your routes.
    :param metrics_app: the application for ``--metrics-addr`` (``/metrics``, ``/debug``).
    """


# -- shutdown -----------------------------------------------------------------------
@hookspec
def spegel_unconfigure(config: SpegelConfig) -> None:
    """Undo what ``spegel_configure`` did.

    Called once when the process ends, after every store and router is closed.

    All implementations are called.

    :param config: the frozen configuration.
    """
