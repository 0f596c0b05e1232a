"""Reaching a node that has several addresses: which ones, in what order, and fallback.

A contact may carry more than one address (a dual-stack node's IPv4 and IPv6 one, see
:class:`~spegel_kademlia.ids.Contact`). A node can only use those of a family its UDP
socket reaches (:func:`socket_families`): an IPv4 socket reaches IPv4, an IPv6 socket
bound to ``::`` without ``IPV6_V6ONLY`` both, any other IPv6 socket IPv6 only.
:func:`start_request` asks the first reachable address and, when that attempt times out
(or the datagram cannot be sent), the next one, under a fresh request id each time, so
an answer still has to come from the address asked.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Iterable

from spegel_core.protocols import Peer
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import Body, Message, ProviderInfo
from spegel_kademlia.rpc import RpcClosed, RpcEndpoint, RpcError

log = logging.getLogger(__name__)

#: Both IP versions.
BOTH = frozenset({4, 6})


def udp_socket(host: str, port: int) -> socket.socket:
    """A bound UDP socket for the router: dual-stack for an empty ``host``.

    An empty host binds ``[::]`` with ``IPV6_V6ONLY`` off where the kernel allows (IPv4
    peers then arrive as IPv4-mapped addresses, which the codec reads as IPv4), else
    ``0.0.0.0``; a literal binds only its family.

    :param host: the address to bind, or ``""`` for every address of both families.
    :param port: the UDP port (0: any free one).
    :returns: the bound, non-blocking socket.
    :raises OSError: it cannot be bound.
    """
    if not host and socket.has_dualstack_ipv6():
        family, host = socket.AF_INET6, "::"
    else:
        host = host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def socket_families(sock: socket.socket | None) -> frozenset[int]:
    """The IP versions (4, 6) that ``sock`` can send datagrams to.

    :param sock: the router's bound UDP socket (None: unknown, assume both).
    :returns: ``{4}``, ``{6}`` or ``{4, 6}``.
    """
    if sock is None:
        return BOTH
    if sock.family == socket.AF_INET:
        return frozenset({4})
    if sock.family != socket.AF_INET6:
        return BOTH
    try:
        v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        host = str(sock.getsockname()[0])
    except OSError:
        return BOTH
    if v6only:
        return frozenset({6})
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.is_unspecified:
        return BOTH
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return frozenset({4})
    return frozenset({6})


@functools.lru_cache(maxsize=16384)
def ip_version(host: str) -> int | None:
    """4 or 6 for an IP literal (IPv4-mapped IPv6 counts as 4), None for anything else.

    :param host: an address as text.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return 4
    return ip.version


def reachable(addresses: Iterable[tuple[str, int]], families: frozenset[int]
              ) -> list[tuple[str, int]]:
    """The ``addresses`` of a family in ``families``, in their order.

    A host that is not an IP literal (a name) is kept: the socket resolves it.

    :param addresses: ``(host, port)`` pairs, best first.
    :param families: IP versions the socket reaches (:func:`socket_families`).
    """
    out = []
    for host, port in addresses:
        version = ip_version(host)
        if version is None or version in families:
            out.append((host, port))
    return out


def preferred(addresses: Iterable[tuple[str, int]], families: frozenset[int]
              ) -> list[tuple[str, int]]:
    """``addresses`` with those of a reachable family first (each group in its order).

    :param addresses: ``(host, port)`` pairs, best first.
    :param families: IP versions this node reaches.
    """
    listed = list(addresses)
    near = reachable(listed, families)
    return near + [a for a in listed if a not in near]


def provider_peer(contact: Contact | None, families: frozenset[int],
                  provider: ProviderInfo) -> Peer:
    """``provider`` as a :class:`~spegel_core.protocols.Peer`, with all its mirror addresses.

    Besides the addresses of its entry, those the routing table proved for the same
    node (``contact``, when the entry's host is one of them), at the entry's mirror
    port. Those of a family this node reaches come first.

    :param contact: the routing table's contact of the provider's node id, if any.
    :param families: IP versions this node reaches.
    :param provider: the provider record or entry.
    """
    port = provider.port
    addresses = list(provider.addresses)
    if contact is not None and any(h == provider.host for h, _ in contact.addresses):
        addresses += [(h, port) for h, _ in contact.addresses if h != provider.host]
    (host, first_port), *rest = preferred(dict.fromkeys(addresses), families)
    return Peer(host, first_port, provider.node_id, tuple(rest))


def start_request(rpc: RpcEndpoint, contact: Contact, body: Body, *,
                  families: frozenset[int], attempt_timeout: float,
                  retries: int = 0) -> asyncio.Future[Message]:
    """Send ``body`` to the first reachable address of ``contact``, then the next ones.

    Each address gets ``retries`` retries of ``attempt_timeout`` seconds (as
    :meth:`RpcEndpoint.start <spegel_kademlia.rpc.RpcEndpoint.start>`); the next address
    is asked when they time out or the datagram cannot be sent. The future fails
    with the last address's error (:class:`~spegel_kademlia.rpc.RpcTimeout` when all
    timed out) and at once with :class:`~spegel_kademlia.rpc.RpcClosed`; cancelling it
    forgets the request in flight.

    :param rpc: the endpoint that sends.
    :param contact: the node asked; its answer must come from it (``node_id``).
    :param body: the request.
    :param families: IP versions this node reaches (:func:`socket_families`).
    :param attempt_timeout: seconds per attempt.
    :param retries: retries per address.
    :returns: a future of the answer.
    """
    addresses = reachable(contact.addresses, families)
    if len(addresses) <= 1:  # the usual case: no extra future
        target = addresses[0] if addresses else contact.address
        return rpc.start(target, body, attempt_timeout=attempt_timeout, retries=retries,
                         node_id=contact.node_id)
    outer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    current: list[asyncio.Future[Message]] = []

    def attempt(index: int) -> None:
        inner = rpc.start(addresses[index], body, attempt_timeout=attempt_timeout,
                          retries=retries, node_id=contact.node_id)
        current[:] = [inner]
        inner.add_done_callback(functools.partial(settle, index))

    def settle(index: int, inner: asyncio.Future[Message]) -> None:
        if inner.cancelled():
            if not outer.done():
                outer.cancel()
            return
        error = inner.exception()  # (always retrieved)
        if outer.done():
            return
        if error is None:
            outer.set_result(inner.result())
            return
        if (isinstance(error, RpcError) and not isinstance(error, RpcClosed)
                and index + 1 < len(addresses)):
            log.debug("%s: no answer at %s (%s); trying %s", contact, addresses[index],
                      error, addresses[index + 1])
            attempt(index + 1)
            return
        outer.set_exception(error)

    def forget(future: asyncio.Future[Message]) -> None:
        if future.cancelled():
            for inner in current:
                inner.cancel()

    outer.add_done_callback(forget)
    attempt(0)
    return outer
