"""How a node answers requests (pure: the routing table and store in, a reply body out)."""

from __future__ import annotations

import random
from collections.abc import Container

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
from spegel_kademlia.store import ProviderStore
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
            found += [ProviderInfo(r.node_id, r.host, r.port) for r in records]
            return Providers(tuple(found), tuple(table.closest(key, k, exclude=message.sender)))
    return None
