"""The thin UDP edge: a datagram protocol, and requests matched to responses by id.

:class:`RpcEndpoint` owns no socket logic beyond ``sendto``: any object with
``sendto(data, addr)`` and ``close()`` can be attached (an asyncio datagram transport in
production, an in-memory fake in tests). Every datagram that fails to decode, comes
from this node itself, or answers no outstanding request is dropped and counted.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar, cast

from spegel_core.protocols import DhtMessage, DroppedDatagram, MetricsSink
from spegel_kademlia.codec import Codec, DecodeError, EncodeError
from spegel_kademlia.ids import Contact
from spegel_kademlia.messages import (
    Body,
    Message,
    Nodes,
    ProviderInfo,
    Providers,
    message_type,
)

log = logging.getLogger(__name__)


class Transport(Protocol):
    """What the endpoint needs of a datagram transport."""

    def sendto(self, data: bytes, addr: Any = None, /) -> None:
        """Send one datagram to ``addr`` (never blocks)."""

    def close(self) -> None:
        """Close the socket."""


class RpcError(Exception):
    """A request failed: base of :class:`RpcTimeout` and :class:`RpcClosed`."""


class RpcTimeout(RpcError):
    """No (matching) response arrived in time."""


class RpcClosed(RpcError):
    """The endpoint is closed (or not open yet)."""


class _RequestIds:
    """Unpredictable 64-bit request ids, read from the OS in blocks (one syscall per 512)."""

    __slots__ = ("_block", "_offset")
    _SIZE = 8 * 512

    def __init__(self) -> None:
        self._block = b""
        self._offset = self._SIZE

    def next(self) -> int:
        if self._offset >= self._SIZE:
            self._block = os.urandom(self._SIZE)
            self._offset = 0
        offset = self._offset
        self._offset = offset + 8
        return int.from_bytes(self._block[offset:offset + 8], "big")


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Message]
    #: Where the answer must come from (normalized host, port, node id if known).
    host: str
    port: int
    node_id: bytes | None
    #: What a retry sends again.
    address: tuple[str, int]
    body: Body
    attempt_timeout: float
    #: Retries left.
    left: int
    timer: asyncio.TimerHandle | None = None


@functools.lru_cache(maxsize=16384)
def normalize_host(host: str) -> str:
    """The canonical text of an IP literal (IPv4-mapped IPv6 becomes IPv4); else as is."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class RpcEndpoint:
    """Sends messages, matches responses to requests, hands everything else on.

    :param codec: encodes and decodes datagrams.
    :param node_id: this node's id (sender of every message; datagrams from it are dropped).
    :param mirror_port: this node's mirror port, carried in every header.
    :param on_message: called with every valid request and every matched response.
    :param metrics: receives ``DhtMessage`` and ``DroppedDatagram`` events.
    :param allowed: whether an address may be a peer (``--peer-cidrs``); datagrams from
        other addresses are dropped, and contacts and providers at other addresses are
        removed from answers before anything sees them. None allows every address.
    """

    def __init__(
        self,
        codec: Codec,
        node_id: bytes,
        mirror_port: int,
        on_message: Callable[[Message], None],
        metrics: MetricsSink,
        allowed: Callable[[str], bool] | None = None,
    ) -> None:
        self.codec = codec
        self.node_id = node_id
        self.mirror_port = mirror_port
        self._on_message = on_message
        self._metrics = metrics
        self._allowed = allowed
        #: Dropped datagrams by reason, and by the message type their header claimed.
        self.drop_reasons: Counter[str] = Counter()
        self.dropped_types: Counter[str] = Counter()
        self._transport: Transport | None = None
        self._closed = False
        self._map_v4 = False
        self._pending: dict[int, _Pending] = {}
        self._ids = _RequestIds()
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self.timeouts = 0

    # -- transport ----------------------------------------------------------------------
    def connection_made(self, transport: Transport) -> None:
        """Attach the transport datagrams are sent through."""
        self._transport = transport
        get_extra_info = getattr(transport, "get_extra_info", None)
        sock = get_extra_info("socket") if callable(get_extra_info) else None
        # A dual-stack IPv6 socket reaches IPv4 peers through IPv4-mapped addresses.
        self._map_v4 = getattr(sock, "family", None) == socket.AF_INET6

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the transport and fail every outstanding request; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        pending_requests = list(self._pending.values())
        self._pending.clear()
        for pending in pending_requests:
            if pending.timer is not None:
                pending.timer.cancel()
            if not pending.future.done():
                pending.future.set_exception(RpcClosed("endpoint closed"))

    @property
    def outstanding(self) -> int:
        """Requests awaiting a response."""
        return len(self._pending)

    # -- sending ------------------------------------------------------------------------
    def send(self, address: tuple[str, int], body: Body, request_id: int, *,
             cookie: bytes = b"") -> int:
        """Encode and send one datagram (trimmed to fit): its size, 0 if it was not sent.

        ``cookie`` goes in the envelope (address validation: an answer's, or an ECHO's).
        """
        label = message_type(body).label
        if self._transport is None or self._closed:
            return 0
        message = Message(body, request_id, self.node_id, self.mirror_port, cookie=cookie)
        if self._map_v4 and ":" not in address[0]:
            address = ("::ffff:" + address[0], address[1])
        try:
            data = self.codec.encode(self.codec.fit(message))
            self._transport.sendto(data, address)
        except (EncodeError, OSError, ValueError, TypeError) as exc:
            log.warning("cannot send %s to %s: %s", label, address, exc)
            self._metrics.emit(DhtMessage(label, "error"))
            return 0
        self.sent += 1
        self._metrics.emit(DhtMessage(label, "sent"))
        return len(data)

    def start(
        self,
        address: tuple[str, int],
        body: Body,
        *,
        attempt_timeout: float,
        retries: int = 0,
        node_id: bytes | None = None,
    ) -> asyncio.Future[Message]:
        """Send ``body`` to ``address``; a future of the response (from ``node_id``, if given).

        No task and no coroutine: one future and one timer per request, however many
        attempts it takes (lookups start dozens of these per second). Each attempt
        waits ``attempt_timeout`` seconds; a retry reuses the request id, so a late
        answer to the first attempt still counts. The future fails with
        :class:`RpcTimeout` or :class:`RpcClosed` (:class:`RpcError` if the datagram
        cannot be sent); cancelling it forgets the request. Whoever starts a request
        must retrieve its outcome (await it or read it in a done callback).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        if self._transport is None or self._closed:
            future.set_exception(RpcClosed("endpoint not open"))
            return future
        request_id = self._ids.next()
        while request_id in self._pending:
            request_id = self._ids.next()
        if not self.send(address, body, request_id):
            future.set_exception(RpcError(f"cannot send to {address}"))
            return future
        pending = _Pending(future, normalize_host(address[0]), address[1], node_id,
                           address, body, attempt_timeout, retries)
        pending.timer = loop.call_later(attempt_timeout, self._expire, request_id)
        self._pending[request_id] = pending
        return future

    def _expire(self, request_id: int) -> None:
        """An attempt ran out: send the next one, or fail the request."""
        pending = self._pending.get(request_id)
        if pending is None:
            return
        future = pending.future
        if future.done():  # cancelled by its owner
            del self._pending[request_id]
            return
        if pending.left > 0:
            pending.left -= 1
            if self.send(pending.address, pending.body, request_id):
                pending.timer = asyncio.get_running_loop().call_later(
                    pending.attempt_timeout, self._expire, request_id)
                return
            error: RpcError = RpcError(f"cannot send to {pending.address}")
        else:
            self.timeouts += 1
            label = message_type(pending.body).label
            self._metrics.emit(DhtMessage(label, "timeout"))
            error = RpcTimeout(f"{label} to {pending.address} timed out")
        del self._pending[request_id]
        future.set_exception(error)

    async def request(
        self,
        address: tuple[str, int],
        body: Body,
        *,
        attempt_timeout: float,
        retries: int = 0,
        node_id: bytes | None = None,
    ) -> Message:
        """Await the response to ``body`` (see :meth:`start`).

        Cancelling the caller cancels the awaited future, which forgets the request.

        :raises RpcTimeout: no answer in time.
        :raises RpcClosed: the endpoint closed.
        :raises RpcError: any other failure of the request.
        """
        return await self.start(address, body, attempt_timeout=attempt_timeout,
                                retries=retries, node_id=node_id)

    # -- receiving ----------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Decode a datagram and route it: matched response, request, or dropped."""
        allowed = self._allowed
        if allowed is not None and not (addr and isinstance(addr[0], str) and allowed(addr[0])):
            self._drop("peer_cidrs")
            return
        try:
            message = self.codec.decode(data, addr)
        except DecodeError as exc:
            log.debug("dropped datagram from %s: %s", addr, exc)
            self._drop(exc.reason, exc.message_type.label if exc.message_type else None)
            return
        if allowed is not None:
            message = _only_allowed(message, allowed)
        if message.sender == self.node_id:
            self._drop("self")
            return
        if message.is_response:
            pending = self._pending.get(message.request_id)
            if pending is None or pending.future.done() or not _matches(pending, message):
                self._drop("unexpected_response")
                return
            del self._pending[message.request_id]
            if pending.timer is not None:
                pending.timer.cancel()
            pending.future.set_result(message)
        self.received += 1
        self._metrics.emit(DhtMessage(message.type.label, "received"))
        try:
            self._on_message(message)
        except Exception:  # one bad datagram must never take the node's receive path down
            log.exception("error handling %s from %s", message.type.label, addr)
            self._drop("handler_error")

    def _drop(self, reason: str, type_label: str | None = None) -> None:
        self.dropped += 1
        self.drop_reasons[reason] += 1
        if type_label is not None:
            self.dropped_types[type_label] += 1
        self._metrics.emit(DroppedDatagram(reason))

    def __repr__(self) -> str:
        return (f"<RpcEndpoint sent={self.sent} received={self.received} "
                f"dropped={self.dropped} timeouts={self.timeouts} "
                f"outstanding={len(self._pending)} closed={self._closed}>")


def _only_allowed(message: Message, allowed: Callable[[str], bool]) -> Message:
    """``message`` without the contacts' and providers' addresses that are not allowed.

    An entry keeps its allowed addresses (in order) and goes when none is left.
    """
    body = message.body
    if isinstance(body, Nodes):
        contacts = _allowed_entries(body.contacts, allowed)
        if contacts is not body.contacts:
            return replace(message, body=Nodes(contacts))
    elif isinstance(body, Providers):
        providers = _allowed_entries(body.providers, allowed)
        contacts = _allowed_entries(body.contacts, allowed)
        if providers is not body.providers or contacts is not body.contacts:
            return replace(message, body=Providers(providers, contacts))
    return message


_E = TypeVar("_E", Contact, ProviderInfo)


def _allowed_entries(entries: tuple[_E, ...], allowed: Callable[[str], bool]
                     ) -> tuple[_E, ...]:
    """``entries`` at their allowed addresses only (the same tuple if all are)."""
    out: list[_E] = []
    changed = False
    for entry in entries:
        kept = [a for a in entry.addresses if allowed(a[0])]
        if len(kept) == len(entry.addresses):
            out.append(entry)
            continue
        changed = True
        if kept:
            (host, port), *more = kept
            out.append(type(entry)(entry.node_id, host, port, tuple(more)))
    return tuple(out) if changed else entries


def _matches(pending: _Pending, message: Message) -> bool:
    if pending.port != message.source_port:
        return False
    if pending.host != message.source_host and is_ip(pending.host):
        return False
    return pending.node_id is None or pending.node_id == message.sender


@functools.lru_cache(maxsize=16384)
def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP literal (not a name to resolve)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class UdpProtocol(asyncio.DatagramProtocol):
    """The asyncio side of the endpoint: forwards datagrams, logs socket errors."""

    def __init__(self, endpoint: RpcEndpoint) -> None:
        self._endpoint = endpoint

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Hand the transport to the endpoint."""
        self._endpoint.connection_made(cast(Transport, transport))

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Hand a datagram to the endpoint."""
        self._endpoint.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        """Log an ICMP-reported error (a request to that address then times out)."""
        log.debug("udp socket error: %s", exc)
