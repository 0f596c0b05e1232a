"""Settings and hooks of static discovery (``--bootstrap-kind static``)."""

from __future__ import annotations

import logging

from pydantic import Field

from spegel_core import hookimpl
from spegel_core.config import CommaList, Duration, SettingsRegistry, SpegelConfig, SpegelSettings
from spegel_core.errors import ConfigError
from spegel_core.local_addresses import LocalAddresses
from spegel_core.protocols import MetricsSink
from spegel_core.registries import DiscoveryRegistry
from spegel_static.discovery import StaticDiscovery
from spegel_static.multiaddrs import StaticPeer, parse_static_peer

log = logging.getLogger(__name__)

__all__ = [
    "BOOTSTRAP_KIND",
    "StaticSettings",
    "make_discovery",
    "parse_peers",
    "spegel_add_settings",
    "spegel_configure",
    "spegel_register_discovery",
]

#: The value of ``--bootstrap-kind`` that selects this source.
BOOTSTRAP_KIND = "static"
_FLAG = "--static-peers"


class StaticSettings(SpegelSettings):
    """Bootstrap from a fixed list of multiaddrs."""

    static_peers: CommaList = Field(
        default_factory=list,
        description="Bootstrap peers as multiaddrs, e.g. /ip4/10.0.0.5/udp/5001,"
        "/dns4/node-a.example/udp/5001 (required with --bootstrap-kind static; "
        "without /udp/PORT the port of --router-addr).",
    )
    static_refresh_interval: Duration = Field(
        default=30 * 60.0, gt=0,
        description="How often to bootstrap again once joined (names are resolved again).",
    )


def _selected(config: SpegelConfig) -> bool:
    return BOOTSTRAP_KIND in config.core.bootstrap_kind


def parse_peers(config: SpegelConfig) -> list[StaticPeer]:
    """Every ``--static-peers`` entry parsed; raises :class:`ConfigError` on the first bad one."""
    port = config.core.router_addr.port
    peers = []
    for text in config.get(StaticSettings).static_peers:
        try:
            peers.append(parse_static_peer(text, default_port=port))
        except ValueError as exc:
            raise ConfigError(_FLAG, str(exc)) from None
    return peers


@hookimpl
def spegel_add_settings(registry: SettingsRegistry) -> None:
    """Declare :class:`StaticSettings` (``--static-*``)."""
    registry.add(StaticSettings, owner=BOOTSTRAP_KIND)


@hookimpl
def spegel_configure(config: SpegelConfig) -> None:
    """Check ``--static-peers`` when static bootstrap is selected (required then)."""
    if not _selected(config):
        if config.get(StaticSettings).static_peers:
            log.warning("%s is ignored without --bootstrap-kind %s", _FLAG, BOOTSTRAP_KIND)
        return
    if not parse_peers(config):
        raise ConfigError(_FLAG, f"required with --bootstrap-kind {BOOTSTRAP_KIND} "
                                 "(e.g. /ip4/10.0.0.5/udp/5001)")


def make_discovery(config: SpegelConfig, metrics: MetricsSink | None = None) -> StaticDiscovery:
    """A :class:`StaticDiscovery` of ``--static-peers``.

    This node's own entry (the router's host and port; with a wildcard router host,
    the machine's host name) is dropped, so one list can be given to every node.
    """
    router = config.core.router_addr
    return StaticDiscovery(parse_peers(config), default_port=router.port,
                           own=LocalAddresses.for_router(router, match_port=True),
                           refresh_interval=config.get(StaticSettings).static_refresh_interval,
                           metrics=metrics)


@hookimpl
def spegel_register_discovery(config: SpegelConfig, registry: DiscoveryRegistry,
                              metrics: MetricsSink) -> None:
    """Add a :class:`StaticDiscovery` when ``static`` is one of ``--bootstrap-kind``."""
    if _selected(config):
        registry.add(BOOTSTRAP_KIND, make_discovery(config, metrics))
