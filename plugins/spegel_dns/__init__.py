"""Bootstrap peers from DNS: the A/AAAA (and SRV) records of a headless Service.

Registered as the built-in plugin ``dns`` (module :mod:`spegel_dns.plugin`);
selected with ``--bootstrap-kind dns --dns-bootstrap-domain NAME``.
"""

from __future__ import annotations

from spegel_core.local_addresses import LocalAddresses
from spegel_dns.discovery import DNSDiscovery
from spegel_dns.settings import DNSSettings

__all__ = ["DNSDiscovery", "DNSSettings", "LocalAddresses"]
