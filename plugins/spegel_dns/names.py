"""Kept for imports of earlier releases: the helpers live in :mod:`spegel_core.hostnames`."""

from __future__ import annotations

from spegel_core.hostnames import canonical_host, check_dns_name, parse_nameserver

__all__ = ["canonical_host", "check_dns_name", "parse_nameserver"]
