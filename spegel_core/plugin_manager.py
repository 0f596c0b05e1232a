"""A typed façade over pluggy, built by :func:`create_plugin_manager`.

Built-in plugins are an explicit tuple registered first; third parties come
from the ``spegel`` entry-point group. Nothing is registered at import time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from spegel_core import PROJECT_NAME, hookspecs
from spegel_core.compat import GoCompatSettings
from spegel_core.config import SettingsRegistry, SpegelConfig
from spegel_core.errors import ConfigError, PluginError
from spegel_core.protocols import ContentStore, Discovery, MetricsSink, Router
from spegel_core.registries import DiscoveryRegistry, MetricsHub, MetricsRegistry

if TYPE_CHECKING:
    from fastapi import FastAPI

    from spegel_core.view import NodeView

log = logging.getLogger(__name__)

#: (name, module) of the built-in plugins, registered in this order.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("oci-layout", "spegel_oci_layout.plugin"),
    ("kademlia", "spegel_kademlia.plugin"),
    ("containerd", "spegel_containerd.plugin"),
    ("static", "spegel_static.plugin"),
    ("dns", "spegel_dns.plugin"),
    ("prometheus", "spegel_prometheus.plugin"),
)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin as ``spegel plugins`` lists it.

    ``source`` is ``"builtin"`` or the name of the distribution that installed the
    plugin; ``hooks`` are the names of the hooks it implements, sorted.
    """

    name: str
    source: str  # "builtin" or the distribution name
    version: str
    hooks: list[str]

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``spegel plugins --json``)."""
        return {"name": self.name, "source": self.source, "version": self.version,
                "hooks": self.hooks}


class PluginManager:
    """Typed access to the hooks; raises :class:`PluginError` naming what is missing."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pluggy = pm
        self._origins: dict[str, tuple[str, str]] = {}

    # -- registration ------------------------------------------------------------
    def register(self, plugin: object, name: str, *, source: str = "builtin",
                 version: str = "") -> None:
        """Register ``plugin`` under ``name``, unless that name is blocked.

        :param plugin: a module or object with ``@hookimpl`` functions.
        :param name: the plugin's name, as ``--disable-plugin`` and ``spegel plugins`` use it.
        :param source: ``"builtin"`` or the distribution that provides it.
        :param version: the distribution's version (built-ins report spegel's).
        :raises PluginError: the name is taken or a hook implementation does not match
            its spec.
        """
        if self.pluggy.is_blocked(name):
            log.debug("plugin %s is disabled", name)
            return
        try:
            self.pluggy.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f'cannot register plugin "{name}": {exc}') from exc
        self._origins[name] = (source, version)

    def unregister(self, name: str) -> None:
        """Remove the plugin registered as ``name``; a no-op if there is none."""
        plugin = self.pluggy.get_plugin(name)
        if plugin is not None:
            self.pluggy.unregister(plugin, name=name)
        self._origins.pop(name, None)

    def block(self, name: str) -> None:
        """Block ``name`` so that registering it later is a no-op (``--disable-plugin``)."""
        self.pluggy.set_blocked(name)

    def load_entrypoints(self) -> None:
        """Register the third-party plugins of the ``spegel`` entry-point group.

        Blocked names and names already registered are skipped.

        :raises PluginError: ``Error importing plugin "<name>": ...`` when an entry
            point fails to import.
        """
        for ep in importlib.metadata.entry_points(group=PROJECT_NAME):
            if self.pluggy.is_blocked(ep.name) or self.pluggy.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                raise PluginError(
                    f'Error importing plugin "{ep.name}": {type(exc).__name__}: {exc}'
                ) from exc
            dist = ep.dist
            self.register(plugin, ep.name, source=dist.name if dist else ep.value,
                          version=dist.version if dist else "")

    def check_pending(self) -> None:
        """Check that every registered hook implementation matches a hook spec.

        :raises PluginError: naming the plugin that implements a hook with no spec
            (a misspelt or unknown ``spegel_*`` name).
        """
        try:
            self.pluggy.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pluggy.get_name(exc.plugin) or repr(exc.plugin)
            raise PluginError(f'plugin "{name}": {exc}') from exc

    # -- hooks -----------------------------------------------------------------
    def settings_registry(self) -> SettingsRegistry:
        """Collect every plugin's settings models (and the core's Go-compatible flags).

        Calls :func:`~spegel_core.hookspecs.spegel_add_settings` on all plugins.
        """
        registry = SettingsRegistry()
        registry.add(GoCompatSettings, owner="core")  # the Go original's flags
        self.pluggy.hook.spegel_add_settings(registry=registry)
        return registry

    def configure(self, config: SpegelConfig) -> None:
        """Call :func:`~spegel_core.hookspecs.spegel_configure` on all plugins."""
        self.pluggy.hook.spegel_configure(config=config)

    def unconfigure(self, config: SpegelConfig) -> None:
        """Call :func:`~spegel_core.hookspecs.spegel_unconfigure` on all plugins."""
        self.pluggy.hook.spegel_unconfigure(config=config)

    def make_content_store(self, config: SpegelConfig,
                           metrics: MetricsSink | None = None) -> ContentStore:
        """The store ``--content-store`` names; raises ConfigError/PluginError.

        :param metrics: handed to the hook (default: a sink that drops events).
        """
        store = self.pluggy.hook.spegel_make_content_store(config=config,
                                                           metrics=_sink(metrics))
        if store is None:
            raise ConfigError(
                "--content-store",
                f"no installed plugin provides content store {config.core.content_store!r} "
                "(see `spegel plugins`)",
            )
        if not isinstance(store, ContentStore):
            raise PluginError(f"content store {store!r} does not implement ContentStore")
        return store

    def discoveries(self, config: SpegelConfig,
                    metrics: MetricsSink | None = None) -> list[Discovery]:
        """Every source of ``--bootstrap-kind``; raises ConfigError/PluginError.

        :param metrics: handed to the hook (default: a sink that drops events).
        """
        registry = DiscoveryRegistry()
        self.pluggy.hook.spegel_register_discovery(config=config, registry=registry,
                                                   metrics=_sink(metrics))
        missing = [kind for kind in config.core.bootstrap_kind if kind not in registry.kinds]
        if missing:
            raise ConfigError(
                "--bootstrap-kind",
                f"no installed plugin provides bootstrap kind {missing[0]!r} "
                "(see `spegel plugins`)",
            )
        return registry.sources

    def make_router(self, config: SpegelConfig, discovery: list[Discovery],
                    metrics: MetricsSink) -> Router | None:
        """The router ``--router`` names, or None for ``--router none``.

        :param discovery: the bootstrap sources from :meth:`discoveries`.
        :param metrics: where the router emits its events.
        :raises ConfigError: no installed plugin provides that router.
        :raises PluginError: the plugin returned something that is not a
            :class:`~spegel_core.protocols.Router`.
        """
        if config.core.router == "none":
            return None
        router = self.pluggy.hook.spegel_make_router(
            config=config, discovery=discovery, metrics=metrics
        )
        if router is None:
            raise ConfigError(
                "--router",
                f"no installed plugin provides router {config.core.router!r} "
                "(see `spegel plugins`)",
            )
        if not isinstance(router, Router):
            raise PluginError(f"router {router!r} does not implement Router")
        return router

    def metrics_sinks(self, config: SpegelConfig) -> list[MetricsSink]:
        """The metrics sinks every plugin registers through ``spegel_register_metrics``."""
        registry = MetricsRegistry()
        self.pluggy.hook.spegel_register_metrics(config=config, registry=registry)
        return registry.sinks

    def add_routes(self, app: FastAPI, config: SpegelConfig, node: NodeView,
                   metrics_app: FastAPI) -> None:
        """Let every plugin add HTTP routes (``spegel_add_routes``).

        :param app: the mirror's application.
        :param node: the read-only view of the node handed to plugins.
        :param metrics_app: the application served on the metrics address.
        """
        self.pluggy.hook.spegel_add_routes(app=app, config=config, node=node,
                                           metrics_app=metrics_app)

    # -- introspection -----------------------------------------------------------
    def plugin_infos(self) -> list[PluginInfo]:
        """Every registered plugin with its source, version and hooks, in registration order."""
        infos = []
        for name, plugin in self.pluggy.list_name_plugin():
            if plugin is None or name is None:
                continue
            hooks = sorted(caller.name for caller in self.pluggy.get_hookcallers(plugin) or [])
            source, version = self._origins.get(name, ("builtin", ""))
            if source == "builtin":
                from spegel_core import __version__

                version = version or __version__
            infos.append(PluginInfo(name, source, version, hooks))
        return infos

    def __repr__(self) -> str:
        names = [name for name, _ in self.pluggy.list_name_plugin()]
        return f"<PluginManager plugins={names}>"


def _sink(metrics: MetricsSink | None) -> MetricsSink:
    return metrics if metrics is not None else MetricsHub()


def _import_builtin(name: str, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(f'Error importing plugin "{name}": {exc}') from exc


def create_plugin_manager(
    *,
    load_entrypoints: bool = True,
    disabled: Iterable[str] = (),
    builtins: Iterable[tuple[str, str]] = BUILTIN_PLUGINS,
) -> PluginManager:
    """Build a plugin manager: built-ins first, then entry points (unless disabled)."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    manager = PluginManager(pm)
    known = {name for name, _ in builtins}
    for name in disabled:
        manager.block(name)
    for name, module in builtins:
        if not pm.is_blocked(name):
            manager.register(_import_builtin(name, module), name)
    if load_entrypoints:
        manager.load_entrypoints()
    manager.check_pending()
    unknown = [name for name in disabled
               if name not in known and name not in
               {ep.name for ep in importlib.metadata.entry_points(group=PROJECT_NAME)}]
    if unknown:
        log.warning("--disable-plugin: no plugin named %s", ", ".join(unknown))
    return manager
