"""Bootstrap peers from a fixed list of multiaddrs (``--static-peers``).

Registered as the built-in plugin ``static`` (module :mod:`spegel_static.plugin`);
selected with ``--bootstrap-kind static``. Own-address filtering and name-server
parsing come from the core (:mod:`spegel_core.local_addresses`,
:mod:`spegel_core.hostnames`); aiodns is imported only when a peer is a name.
"""

from __future__ import annotations

from spegel_static.discovery import StaticDiscovery
from spegel_static.multiaddrs import StaticPeer, parse_static_peer
from spegel_static.plugin import StaticSettings

__all__ = ["StaticDiscovery", "StaticPeer", "StaticSettings", "parse_static_peer"]
