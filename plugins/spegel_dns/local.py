"""Kept for imports of earlier releases: see :mod:`spegel_core.local_addresses`."""

from __future__ import annotations

from spegel_core.local_addresses import WILDCARD_HOSTS, LocalAddresses

__all__ = ["WILDCARD_HOSTS", "LocalAddresses"]
