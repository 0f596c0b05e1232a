"""The containerd content store: containerd's content store is the node's cache.

Registered as the built-in plugin ``containerd`` (module :mod:`spegel_containerd.plugin`).
The gRPC messages are spegel's own subset of containerd's API v1 (``_pb/*.proto``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spegel_containerd.plugin import ContainerdSettings

if TYPE_CHECKING:
    from spegel_containerd.store import ContainerdStore


def __getattr__(name: str) -> Any:
    # The store (and grpc with it) is imported on first use only.
    if name == "ContainerdStore":
        from spegel_containerd.store import ContainerdStore

        return ContainerdStore
    raise AttributeError(name)


__all__ = ["ContainerdSettings", "ContainerdStore"]
