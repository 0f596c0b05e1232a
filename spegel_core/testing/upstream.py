"""The upstream registry of the test kit: :mod:`spegel_core.localcluster.upstream`."""

from __future__ import annotations

from spegel_core.localcluster.upstream import REGISTRY_BINARY, UpstreamRegistry, skopeo_copy

__all__ = ["REGISTRY_BINARY", "UpstreamRegistry", "skopeo_copy"]
