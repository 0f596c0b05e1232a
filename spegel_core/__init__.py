"""spegel: a stateless, cluster-local, peer-to-peer OCI registry mirror.

Plugins import :data:`hookimpl` from here::

    from spegel_core import hookimpl

    @hookimpl
    def spegel_make_content_store(config): ...
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: The pluggy project name, hook marker name and entry-point group.
PROJECT_NAME = "spegel"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
