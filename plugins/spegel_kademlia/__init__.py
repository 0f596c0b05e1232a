"""Kademlia DHT router for spegel: 256-bit ids, k-buckets and iterative lookups over UDP.

The protocol logic lives in plain classes without I/O (:mod:`.codec`, :mod:`.table`,
:mod:`.lookup`, :mod:`.store`, :mod:`.handlers`); :class:`~spegel_kademlia.node.KademliaRouter`
wires them to an asyncio datagram endpoint (:mod:`.rpc`). The plugin hooks are in
:mod:`spegel_kademlia.plugin`.
"""

from __future__ import annotations

from spegel_kademlia.node import KademliaRouter
from spegel_kademlia.settings import KademliaSettings

__all__ = ["KademliaRouter", "KademliaSettings"]
