"""The routing table: k-buckets by XOR distance, with ping-before-evict (pure: no I/O).

Bucket ``i`` holds up to ``k`` contacts whose distance to the own id has ``i + 1``
bits (see :func:`~spegel_kademlia.ids.bucket_index`), least recently seen first. A full
bucket never drops a live contact for a newcomer: :meth:`RoutingTable.add` parks the
newcomer in the bucket's replacement cache and returns the least recently seen contact
for the caller to ping. A contact that answers is seen again (moved to the tail); one
that fails ``max_failures`` times in a row is evicted and the most recently seen
replacement takes its place.

Several addresses: an id heard from at another address than the one the table holds
(a dual-stack node's IPv4 and IPv6 address) stays one contact, with that address first
(the last one proven is preferred) and the others after it, at most
:data:`~spegel_kademlia.ids.MAX_ADDRESSES` (the oldest goes). A new address on a host
already listed replaces it (the node moved to another port). The caller adds only
addresses a datagram came from (validated on the open DHT), never ones a payload names.

Diversity (``max_per_ip``): one id per ``host:port`` and at most ``max_per_ip`` ids per
IP address (an IPv6 address counts by its /64), in buckets and replacement caches
alike, so one address can never fill a bucket with made-up ids (as libp2p's diversity
filter does). Every address of a contact counts, each in its own group (an id counts
once per group however many of its addresses fall in it). A newcomer that would break
the rule is refused; an id already in the table does not gain (or move to) an address
that would break it.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter

from spegel_kademlia.ids import ID_BITS, Contact, bucket_index, with_addresses

_first = itemgetter(0)


@functools.lru_cache(maxsize=16384)
def ip_group(host: str) -> str:
    """What counts as one address for diversity: an IPv4 address, an IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _indices(mask: int) -> Iterator[int]:
    """Indices of the set bits of ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _bucket_order(own: int, target: int, occupied: int) -> Iterator[int]:
    """The non-empty buckets (bits of ``occupied``) by distance of their ids to ``target``.

    Every id of bucket ``i`` is ``own ^ x`` with ``x`` in ``[2**i, 2**(i+1))``, so its
    distance to ``target`` is ``d ^ x`` with ``d = own ^ target``. With ``j`` the top bit
    of ``d``: bucket ``j`` holds the ids below ``2**j``. A bucket ``i < j`` keeps the bits
    of ``d`` above ``i`` and flips bit ``i``: it is nearer than every lower bucket when
    bit ``i`` of ``d`` is set (it clears it), farther when it is not. So the buckets
    below ``j`` whose bit is set come next, highest first, then those whose bit is
    clear, lowest first; then buckets above ``j``, lowest first. No two buckets
    overlap in distance, so only the contacts of the buckets visited need sorting.
    """
    d = own ^ target
    if d == 0:  # the own id: distance to target is distance to us
        yield from _indices(occupied)
        return
    j = d.bit_length() - 1
    if occupied >> j & 1:
        yield j
    below = occupied & ((1 << j) - 1)
    nearer = below & d
    while nearer:
        top = nearer.bit_length() - 1
        yield top
        nearer ^= 1 << top
    yield from _indices(below & ~d)
    yield from _indices(occupied >> (j + 1) << (j + 1))


@dataclass(slots=True)
class _Entry:
    contact: Contact
    #: The node id as an integer (for XOR distances without converting each time).
    value: int
    failures: int = 0


class RoutingTable:
    """k-buckets of contacts around ``own_id``.

    :param own_id: this node's id; it is never added.
    :param k: contacts per bucket (and per replacement cache unless ``replacements``).
    :param max_failures: consecutive failures after which a contact is evicted.
    :param replacements: size of each bucket's replacement cache.
    :param clock: monotonic seconds, for bucket refresh bookkeeping.
    :param max_per_ip: most ids per IP address (IPv6: per /64) in buckets and
        replacement caches, besides one id per ``host:port``; None: no limit on either.
    """

    def __init__(
        self,
        own_id: bytes,
        *,
        k: int = 20,
        max_failures: int = 3,
        replacements: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_per_ip: int | None = None,
    ) -> None:
        if k < 1 or max_failures < 1:
            raise ValueError("k and max_failures must be at least 1")
        if max_per_ip is not None and max_per_ip < 1:
            raise ValueError("max_per_ip must be at least 1 (or None for no limit)")
        self.max_per_ip = max_per_ip
        self.own_id = own_id
        self._own = int.from_bytes(own_id, "big")
        self.k = k
        self.max_failures = max_failures
        self.replacements = k if replacements is None else replacements
        self._clock = clock
        # Made on first use: a table fills ~log2(N) of its 256 buckets.
        self._buckets: defaultdict[int, OrderedDict[bytes, _Entry]] = defaultdict(OrderedDict)
        self._spare: defaultdict[int, OrderedDict[bytes, Contact]] = defaultdict(OrderedDict)
        now = clock()
        self._refreshed = [now] * ID_BITS
        self._members: dict[bytes, Contact] = {}
        #: Bit i set: bucket i holds a contact (closest() visits only those).
        self._occupied = 0
        #: Diversity bookkeeping over buckets and replacement caches (with max_per_ip).
        self._per_ip: Counter[str] = Counter()
        self._endpoints: dict[tuple[str, int], bytes] = {}
        #: Newcomers refused by the diversity rule.
        self.refused = 0

    # -- diversity ----------------------------------------------------------------------
    def admits(self, contact: Contact) -> bool:
        """Whether ``contact`` would take a free place in its bucket, or add an address.

        True when it is not in the table, its bucket has room, and the diversity rule
        lets it in; or when its id is in a bucket and ``contact`` brings an address the
        table does not list for it and would take (so a round trip should prove it).
        """
        node_id = contact.node_id
        if node_id == self.own_id:
            return False
        known = self._members.get(node_id)
        if known is not None:
            return any(address not in known.addresses and self._address_ok(address, node_id)
                       for address in contact.addresses)
        if len(self._buckets.get(bucket_index(self.own_id, node_id), ())) >= self.k:
            return False
        return self._diverse(contact)

    def _address_ok(self, address: tuple[str, int], node_id: bytes) -> bool:
        """Whether ``node_id`` may hold ``address`` beside what the table holds now."""
        if self.max_per_ip is None:
            return True
        holder = self._endpoints.get(address)
        if holder is not None:
            return holder == node_id
        return self._per_ip[ip_group(address[0])] < self.max_per_ip

    def _diverse(self, contact: Contact) -> bool:
        if self.max_per_ip is None:
            return True
        return all(self._address_ok(address, contact.node_id)
                   for address in contact.addresses)

    def _hold(self, contact: Contact) -> None:
        if self.max_per_ip is not None:
            for address in contact.addresses:
                self._endpoints[address] = contact.node_id
            for group in {ip_group(host) for host, _ in contact.addresses}:
                self._per_ip[group] += 1

    def _release(self, contact: Contact) -> None:
        if self.max_per_ip is not None:
            for address in contact.addresses:
                if self._endpoints.get(address) == contact.node_id:
                    del self._endpoints[address]
            for group in {ip_group(host) for host, _ in contact.addresses}:
                self._per_ip[group] -= 1
                if self._per_ip[group] <= 0:
                    del self._per_ip[group]

    def _merged(self, old: Contact, new: Contact) -> Contact:
        """The contact to keep for an id heard from at ``new``'s addresses.

        ``new``'s addresses first, then ``old``'s on other hosts; an address the
        diversity rule refuses is left out (and the old contact kept if that leaves
        nothing new).
        """
        if new.addresses == old.addresses[:len(new.addresses)]:
            return old
        self._release(old)
        fresh = [a for a in new.addresses
                 if a in old.addresses or self._address_ok(a, old.node_id)]
        hosts = {host for host, _ in fresh}
        kept = with_addresses(old, (*fresh, *(a for a in old.addresses if a[0] not in hosts)))
        self._hold(kept)
        return kept

    # -- membership -------------------------------------------------------------------
    def add(self, contact: Contact) -> Contact | None:
        """Record that ``contact`` was seen alive (at its addresses, from datagrams).

        An id already in a bucket stays one contact: ``contact``'s addresses come
        first, its other known ones follow (see the module docstring).

        Returns None when the contact is (now) in its bucket, or, when the bucket is
        full, the least recently seen contact of that bucket, which the caller should
        ping: if it answers, ``add`` it again; if not, :meth:`mark_failed` it.
        """
        if contact.node_id == self.own_id:
            return None
        index = bucket_index(self.own_id, contact.node_id)
        bucket = self._buckets[index]
        entry = bucket.get(contact.node_id)
        if entry is not None:
            contact = self._merged(entry.contact, contact)
            entry.contact = contact
            entry.failures = 0
            bucket.move_to_end(contact.node_id)
            self._members[contact.node_id] = contact
            return None
        spare = self._spare[index]
        old = spare.pop(contact.node_id, None)
        if old is not None:
            self._release(old)
        if not self._diverse(contact):
            self.refused += 1
            return None
        if len(bucket) < self.k:
            bucket[contact.node_id] = _Entry(contact, int.from_bytes(contact.node_id, "big"))
            self._hold(contact)
            self._members[contact.node_id] = contact
            self._occupied |= 1 << index
            return None
        if self.replacements:
            spare[contact.node_id] = contact
            self._hold(contact)
            while len(spare) > self.replacements:
                self._release(spare.popitem(last=False)[1])
        return next(iter(bucket.values())).contact

    def remove(self, node_id: bytes) -> bool:
        """Evict ``node_id`` now, promoting a replacement; True if it was in a bucket."""
        if node_id == self.own_id:
            return False
        index = bucket_index(self.own_id, node_id)
        spared = self._spare[index].pop(node_id, None)
        if spared is not None:
            self._release(spared)
        gone = self._buckets[index].pop(node_id, None)
        if gone is None:
            return False
        self._release(gone.contact)
        del self._members[node_id]
        spare = self._spare[index]
        if spare:
            _, replacement = spare.popitem(last=True)
            self._buckets[index][replacement.node_id] = _Entry(
                replacement, int.from_bytes(replacement.node_id, "big"))
            # A promoted contact has not been seen for a while: least recent first.
            self._buckets[index].move_to_end(replacement.node_id, last=False)
            self._members[replacement.node_id] = replacement
        elif not self._buckets[index]:
            self._occupied &= ~(1 << index)
        return True

    def mark_failed(self, node_id: bytes) -> bool:
        """Count a failed request to ``node_id``; True if that evicted it."""
        if node_id == self.own_id:
            return False
        index = bucket_index(self.own_id, node_id)
        entry = self._buckets[index].get(node_id)
        if entry is None:
            spared = self._spare[index].pop(node_id, None)
            if spared is not None:
                self._release(spared)
            return False
        entry.failures += 1
        if entry.failures >= self.max_failures:
            return self.remove(node_id)
        return False

    def get(self, node_id: bytes) -> Contact | None:
        """The contact of ``node_id`` if it is in a bucket."""
        return self._members.get(node_id)

    def failures(self, node_id: bytes) -> int:
        """Consecutive failures of ``node_id`` (0 when unknown)."""
        if node_id == self.own_id:
            return 0
        entry = self._buckets[bucket_index(self.own_id, node_id)].get(node_id)
        return 0 if entry is None else entry.failures

    # -- queries ----------------------------------------------------------------------
    def closest(self, target: bytes, n: int | None = None, *,
                exclude: bytes | None = None) -> list[Contact]:
        """Up to ``n`` (default ``k``) contacts closest to ``target``, closest first.

        Walks the buckets in the order of their distance to ``target`` and sorts only
        the contacts of the buckets it needs (this runs for every FIND_NODE and
        GET_PROVIDERS answered), see :func:`_bucket_order`.
        """
        count = self.k if n is None else n
        if count <= 0:
            return []
        t = int.from_bytes(target, "big")
        buckets = self._buckets
        need = count if exclude is None else count + 1
        found: list[tuple[int, Contact]] = []
        for index in _bucket_order(self._own, t, self._occupied):
            found += [(entry.value ^ t, entry.contact) for entry in buckets[index].values()]
            if len(found) >= need:
                break
        found.sort(key=_first)
        if exclude is None:
            return [contact for _, contact in found[:count]]
        return [contact for _, contact in found[:need] if contact.node_id != exclude][:count]

    def bucket(self, index: int) -> list[Contact]:
        """Contacts of bucket ``index``, least recently seen first."""
        return [entry.contact for entry in self._buckets[index].values()]

    def replacement_cache(self, index: int) -> list[Contact]:
        """Replacement candidates of bucket ``index``, most recent last."""
        return list(self._spare[index].values())

    def __iter__(self) -> Iterator[Contact]:
        return iter(list(self._members.values()))

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._members

    @property
    def nonempty_buckets(self) -> int:
        """How many buckets hold at least one contact."""
        return self._occupied.bit_count()

    # -- refresh bookkeeping ----------------------------------------------------------
    def touch_bucket(self, target: bytes) -> None:
        """Note that a lookup for ``target`` just refreshed the bucket it falls in."""
        if target != self.own_id:
            self._refreshed[bucket_index(self.own_id, target)] = self._clock()

    def stagger_refresh(self, interval: float, rng: Callable[[], float]) -> None:
        """Make the buckets come due for refresh at random times within ``interval`` s.

        A node that just joined knows its neighbourhood (the self lookup) and fills
        the rest of its table from the traffic that reaches it; refreshing every
        bucket at once on joining would cost ~11 lookups per node (~450 datagrams at
        1000 nodes), all while a whole cluster may be joining together. Spread
        instead, the buckets that traffic has not touched are refreshed one by one.
        ``rng`` draws uniformly from ``[0, 1)`` (``random.Random.random``).
        """
        start = self._clock() - interval
        self._refreshed = [start + interval * rng() for _ in range(ID_BITS)]

    def stale_buckets(self, interval: float) -> list[int]:
        """Buckets from the closest non-empty one outwards not refreshed for ``interval`` s.

        Buckets closer than the closest contact are left out: they are empty because
        no such node exists, and a self lookup covers them.
        """
        if not self._occupied:
            return []
        lowest = (self._occupied & -self._occupied).bit_length() - 1
        now = self._clock()
        return [i for i in range(lowest, ID_BITS) if now - self._refreshed[i] >= interval]

    def __repr__(self) -> str:
        return (f"<RoutingTable {self.own_id.hex()[:12]} contacts={len(self._members)} "
                f"buckets={self.nonempty_buckets} k={self.k}>")

