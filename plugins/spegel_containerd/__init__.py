"""The containerd content store: containerd's content store is the node's cache.

Registered as the built-in plugin ``containerd`` (module :mod:`spegel_containerd.plugin`).
The gRPC messages are spegel's own subset of containerd's API v1 (``_pb/*.proto``).
"""

from __future__ import annotations

from spegel_containerd.plugin import ContainerdSettings
from spegel_containerd.store import ContainerdStore

__all__ = ["ContainerdSettings", "ContainerdStore"]
