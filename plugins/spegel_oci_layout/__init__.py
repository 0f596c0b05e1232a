"""The embedded default content store: an OCI image layout directory.

Registered as the built-in plugin ``oci-layout`` (module :mod:`spegel_oci_layout.plugin`).
"""

from __future__ import annotations

from spegel_oci_layout.store import OCILayoutStore

__all__ = ["OCILayoutStore"]
