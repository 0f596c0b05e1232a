"""What an image index or manifest refers to: the core's :mod:`spegel_core.oci.descriptors`.

Kept so that earlier imports still work; the parsing is shared with the OCI layout store.
"""

from __future__ import annotations

from spegel_core.oci.descriptors import Child, children, is_manifest_type

__all__ = ["Child", "children", "is_manifest_type"]
