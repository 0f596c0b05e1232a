"""Watching a router from outside: the moments of joining and every request it sends.

A measurement hook for simulations and tests (``tests/scale`` times readiness and counts
the hops of lookups with it), so they observe the real router without overriding its
private methods. A watcher is set as :attr:`KademliaRouter.watch
<spegel_kademlia.joining.Joining.watch>` before :meth:`~spegel_kademlia.node.KademliaRouter.start`;
its methods are called on the event loop, must return at once and must not raise. None
(the default) costs one attribute test per event.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import Message


class RouterWatch(Protocol):
    """What a router tells its watcher."""

    def seeds_asked(self) -> None:
        """A bootstrap attempt has its seed addresses (discovery answered) and asks them."""

    def self_lookup(self, ended: bool) -> None:
        """The self lookup of a bootstrap attempt starts (False) or has ended (True).

        :param ended: whether it has ended.
        """

    def requested(self, contact: Contact, future: asyncio.Future[Message]) -> None:
        """A request went to ``contact``.

        :param contact: the node asked.
        :param future: resolves to its answer, or fails (timeout, closed).
        """
