"""The plugin hooks of DNS discovery (``--bootstrap-kind dns``)."""

from __future__ import annotations

import aiodns

from spegel_core import hookimpl
from spegel_core.config import SettingsRegistry, SpegelConfig
from spegel_core.errors import ConfigError, PluginError
from spegel_core.local_addresses import LocalAddresses
from spegel_core.protocols import MetricsSink
from spegel_core.registries import DiscoveryRegistry
from spegel_dns.discovery import DNSDiscovery
from spegel_dns.settings import DNSSettings

__all__ = [
    "BOOTSTRAP_KIND",
    "make_discovery",
    "spegel_add_settings",
    "spegel_configure",
    "spegel_register_discovery",
]

#: The value of ``--bootstrap-kind`` that selects this source.
BOOTSTRAP_KIND = "dns"


def _selected(config: SpegelConfig) -> bool:
    return BOOTSTRAP_KIND in config.core.bootstrap_kind


@hookimpl
def spegel_add_settings(registry: SettingsRegistry) -> None:
    """Declare :class:`DNSSettings` (``--dns-*``)."""
    registry.add(DNSSettings, owner=BOOTSTRAP_KIND)


@hookimpl
def spegel_configure(config: SpegelConfig) -> None:
    """Require ``--dns-bootstrap-domain`` when DNS bootstrap is selected."""
    if not _selected(config):
        return
    if config.get(DNSSettings).dns_bootstrap_domain is None:
        raise ConfigError("--dns-bootstrap-domain",
                          f"required with --bootstrap-kind {BOOTSTRAP_KIND}")
    if not hasattr(aiodns.DNSResolver, "query_dns"):
        raise PluginError("DNS discovery needs aiodns 4 or later (pip install 'aiodns>=4')")


def make_discovery(config: SpegelConfig, metrics: MetricsSink | None = None) -> DNSDiscovery:
    """A :class:`DNSDiscovery` from the settings (``spegel_configure`` has checked them).

    The peers' port defaults to the port of ``--router-addr`` (every node uses the
    same ports); this node's own addresses are the router's host, or the machine's
    host name when the router listens on every interface.
    """
    settings = config.get(DNSSettings)
    if settings.dns_bootstrap_domain is None:
        raise ConfigError("--dns-bootstrap-domain",
                          f"required with --bootstrap-kind {BOOTSTRAP_KIND}")
    router = config.core.router_addr
    return DNSDiscovery(
        settings.dns_bootstrap_domain,
        port=settings.dns_port or router.port,
        nameservers=settings.dns_nameservers,
        sample_size=settings.dns_sample_size,
        udp_pool=settings.dns_udp_pool,
        timeout=settings.dns_timeout,
        refresh_interval=settings.dns_refresh_interval,
        srv_name=settings.dns_srv_name,
        own=LocalAddresses.for_router(router, match_port=False),
        metrics=metrics,
    )


@hookimpl
def spegel_register_discovery(config: SpegelConfig, registry: DiscoveryRegistry,
                              metrics: MetricsSink) -> None:
    """Add a :class:`DNSDiscovery` (emitting ``DnsQuery`` events) when ``dns`` is selected."""
    if _selected(config):
        registry.add(BOOTSTRAP_KIND, make_discovery(config, metrics))
