"""The rendezvous of single flight: who fetches a digest, and who streams from whom.

Pure state, no I/O and no clock of its own (``now`` is passed in), shared by every
router that implements :class:`~spegel_core.protocols.SingleFlightRouter`: the node
closest to a digest's key keeps a :class:`ClaimBook` and answers the claims sent to
it (``docs/fleet.md``).

- The first live claimant of a digest is told **go**: its containerd fetches from
  upstream, and its ingest makes it an arriving provider.
- Every later claimant joins the flight's tree under a **parent** that is already a
  member: members are filled in the order they joined (breadth first), each with at
  most ``fanout`` children, so the tree's depth is about ``log_fanout(N)`` and no
  provider feeds more than ``fanout`` nodes.
- Everything is soft state: a member lasts ``ttl`` seconds unless it claims again
  (a claim by a member is its renewal and gets the same answer). A flight whose
  fetcher expired or released is over: the next claimant is told go.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from spegel_core.protocols import ClaimAnswer, Peer

__all__ = ["ClaimBook", "Flight", "Member"]

#: Flights one book keeps at most (a new one replaces the oldest expired, else is refused).
MAX_FLIGHTS = 4096
#: Members of one flight at most (later claimants are told go: never worse than today).
MAX_MEMBERS = 65536


@dataclass(slots=True)
class Member:
    """One node of a flight's tree."""

    peer: Peer
    parent: bytes | None
    depth: int
    expires: float
    children: int = 0


@dataclass(slots=True)
class Flight:
    """The tree of one digest: its fetcher (the root) and the members under it."""

    fetcher: bytes
    members: dict[bytes, Member] = field(default_factory=dict)
    #: Members that may still take children, in the order they joined (breadth first).
    open: deque[bytes] = field(default_factory=deque)

    def live(self, now: float) -> bool:
        """Whether the fetcher's claim is still renewed at ``now``."""
        root = self.members.get(self.fetcher)
        return root is not None and root.expires > now

    @property
    def depth(self) -> int:
        """The deepest member's depth (0: only the fetcher)."""
        return max((m.depth for m in self.members.values()), default=0)

    @property
    def max_children(self) -> int:
        """The most children any member feeds."""
        return max((m.children for m in self.members.values()), default=0)


def _identity(peer: Peer) -> bytes:
    return peer.node_id or f"{peer.host}:{peer.port}".encode()


class ClaimBook:
    """Flights by key (the digest, or its DHT key id), as the rendezvous holds them.

    :param max_flights: flights kept at most.
    :param max_members: members of one flight at most.
    """

    def __init__(self, *, max_flights: int = MAX_FLIGHTS,
                 max_members: int = MAX_MEMBERS) -> None:
        self.max_flights = max_flights
        self.max_members = max_members
        self.flights: dict[bytes, Flight] = {}
        #: Claims answered go / with a parent, since start.
        self.granted = 0
        self.joined = 0

    def __len__(self) -> int:
        return len(self.flights)

    def __repr__(self) -> str:
        return f"<ClaimBook flights={len(self.flights)} go={self.granted} joined={self.joined}>"

    def claim(self, key: bytes, requester: Peer, *, fanout: int, ttl: float,
              now: float) -> ClaimAnswer:
        """Answer a claim (or a renewal) of ``key`` by ``requester``."""
        fanout = max(1, fanout)
        me = _identity(requester)
        flight = self.flights.get(key)
        if flight is not None and not flight.live(now):
            del self.flights[key]
            flight = None
        if flight is None:
            return self._new_flight(key, requester, me, ttl, now)
        member = flight.members.get(me)
        if member is not None:
            member.expires = now + ttl
            member.peer = requester
            return self._answer(flight, member, ttl)
        if len(flight.members) >= self.max_members:
            return ClaimAnswer(go=True, fetcher=requester, parent=None, depth=0, ttl=ttl)
        parent = self._open_parent(flight, fanout, now)
        member = Member(requester, _identity(parent.peer), parent.depth + 1, now + ttl)
        parent.children += 1
        if parent.children >= fanout and flight.open and flight.open[0] == member.parent:
            flight.open.popleft()
        flight.members[me] = member
        flight.open.append(me)
        self.joined += 1
        return self._answer(flight, member, ttl)

    def holds(self, key: bytes, now: float) -> bool:
        """Whether a live flight of ``key`` is kept here."""
        flight = self.flights.get(key)
        return flight is not None and flight.live(now)

    def release(self, key: bytes, requester: Peer) -> None:
        """``requester`` leaves the flight of ``key`` (the fetcher leaving ends it)."""
        flight = self.flights.get(key)
        if flight is None:
            return
        me = _identity(requester)
        if me == flight.fetcher:
            del self.flights[key]
            return
        member = flight.members.pop(me, None)
        if member is not None and member.parent is not None:
            parent = flight.members.get(member.parent)
            if parent is not None:
                parent.children = max(0, parent.children - 1)
                if parent.children == 0 and member.parent not in flight.open:
                    flight.open.appendleft(member.parent)

    def sweep(self, now: float) -> None:
        """Forget flights whose fetcher expired, and expired members of the others."""
        for key in [k for k, f in self.flights.items() if not f.live(now)]:
            del self.flights[key]
        for flight in self.flights.values():
            gone = [i for i, m in flight.members.items() if m.expires <= now]
            for ident in gone:
                del flight.members[ident]

    def snapshot(self, now: float) -> list[dict[str, object]]:
        """The live flights, for the debug page."""
        out: list[dict[str, object]] = []
        for key, flight in self.flights.items():
            if not flight.live(now):
                continue
            root = flight.members[flight.fetcher]
            out.append({"key": key.hex(), "fetcher": root.peer.url,
                        "members": len(flight.members), "depth": flight.depth,
                        "max_children": flight.max_children,
                        "expires_in": round(root.expires - now, 1)})
        return out

    # -- internals ----------------------------------------------------------------------
    def _new_flight(self, key: bytes, requester: Peer, me: bytes, ttl: float,
                    now: float) -> ClaimAnswer:
        if len(self.flights) >= self.max_flights:
            self.sweep(now)
            while len(self.flights) >= self.max_flights:
                del self.flights[next(iter(self.flights))]  # the oldest flight
        flight = Flight(fetcher=me)
        flight.members[me] = Member(requester, None, 0, now + ttl)
        flight.open.append(me)
        self.flights[key] = flight
        self.granted += 1
        return ClaimAnswer(go=True, fetcher=requester, parent=None, depth=0, ttl=ttl)

    def _open_parent(self, flight: Flight, fanout: int, now: float) -> Member:
        """The first member (in join order) that is alive and has room for a child."""
        while flight.open:
            ident = flight.open[0]
            candidate = flight.members.get(ident)
            if candidate is not None and candidate.expires > now and candidate.children < fanout:
                return candidate
            flight.open.popleft()
        # Every member is full (or gone): the fetcher takes one more rather than nobody.
        return flight.members[flight.fetcher]

    def _answer(self, flight: Flight, member: Member, ttl: float) -> ClaimAnswer:
        root = flight.members[flight.fetcher]
        if member is root:
            return ClaimAnswer(go=True, fetcher=root.peer, parent=None, depth=0, ttl=ttl)
        parent = flight.members.get(member.parent) if member.parent is not None else None
        return ClaimAnswer(go=False, fetcher=root.peer,
                           parent=parent.peer if parent is not None else root.peer,
                           depth=member.depth, ttl=ttl)
