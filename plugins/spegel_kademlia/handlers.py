"""How a node answers requests (pure: the routing table and store in, a reply body out)."""

from __future__ import annotations

import random
from collections.abc import Container

from spegel_kademlia.ids import MAX_ADDRESSES
from spegel_kademlia.messages import (
    AddProvider,
    AddProviderAck,
    Body,
    FindNode,
    GetProviders,
    Message,
    Nodes,
    Ping,
    Pong,
    ProviderInfo,
    Providers,
)
from spegel_kademlia.store import ProviderRecord, ProviderStore
from spegel_kademlia.table import RoutingTable


def answer(message: Message, table: RoutingTable, providers: ProviderStore, *,
           k: int, rng: random.Random, me: ProviderInfo | None = None,
           advertised: Container[bytes] = ()) -> Body | None:
    """The reply to a request, or None when it gets none (responses, withdrawals).

    - FIND_NODE and GET_PROVIDERS return the ``k`` closest contacts except the asker.
    - ADD_PROVIDER records the datagram's source address, never one from the payload,
      and only for the sender itself; ``ttl`` 0 withdraws the record (no reply).
    - GET_PROVIDERS returns up to ``wanted`` providers, a random sample when more are
      known so that askers spread over them. A key in ``advertised`` (this node
      holds it) has ``me`` first among them, as a provide is stored locally first in
      libp2p's DHT: whoever asks the node for what it holds hears that it holds it,
      wherever its records went. The asker takes the answer's source address for it
      (see :func:`spegel_kademlia.search.named_self`), so ``me.host`` is a placeholder.
      A provider whose record's address is one of the addresses the routing table
      proved for its id is listed at all of them (:func:`provider_entry`).
    """
    match message.body:
        case Ping():
            return Pong()
        case FindNode(target):
            return Nodes(tuple(table.closest(target, k, exclude=message.sender)))
        case AddProvider(key, provider_id, port, ttl):
            if provider_id != message.sender:
                return AddProviderAck(False)
            if ttl == 0:
                providers.remove(key, provider_id, host=message.source_host)
                return None
            return AddProviderAck(providers.add(key, provider_id, message.source_host, port, ttl))
        case GetProviders(key, wanted):
            records = [r for r in providers.get(key)
                       if r.node_id != message.sender and (me is None or r.node_id != me.node_id)]
            found = [me] if me is not None and wanted > 0 and key in advertised else []
            room = wanted - len(found)
            if len(records) > room:
                records = rng.sample(records, max(0, room))
            found += [provider_entry(r, table) for r in records]
            return Providers(tuple(found), tuple(table.closest(key, k, exclude=message.sender)))
    return None


def provider_entry(record: ProviderRecord, table: RoutingTable) -> ProviderInfo:
    """The PROVIDERS entry of ``record``: its address, then the table's others for its id.

    The record's address is where the ADD_PROVIDER came from; the others are added
    only when the routing table holds the same node id at that address too, so every
    address listed was the source of a datagram of that node (none comes from a
    payload). Ports are the record's mirror port.

    :param record: a provider record.
    :param table: the routing table.
    """
    contact = table.get(record.node_id)
    if contact is None or not contact.more or all(h != record.host
                                                  for h, _ in contact.addresses):
        return ProviderInfo(record.node_id, record.host, record.port)
    more = tuple((h, record.port) for h, _ in contact.addresses if h != record.host)
    return ProviderInfo(record.node_id, record.host, record.port, more[:MAX_ADDRESSES - 1])
