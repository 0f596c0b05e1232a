"""The DHT's messages: types, bodies and the envelope (plain values, no encoding).

The wire format is in :mod:`spegel_kademlia.codec`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from spegel_kademlia.ids import Contact


class MessageType(enum.IntEnum):
    """The message types; the value is the type byte on the wire."""

    PING = 1
    PONG = 2
    FIND_NODE = 3
    NODES = 4
    ADD_PROVIDER = 5
    ADD_PROVIDER_ACK = 6
    GET_PROVIDERS = 7
    PROVIDERS = 8
    CLAIM = 9
    CLAIM_ANSWER = 10
    ECHO = 11

    @property
    def label(self) -> str:
        """Lower-case name, as used in metric labels."""
        return _LABELS[self]


# Contacts, providers and messages are built for every datagram (20 per answer):
# a frozen dataclass's __init__ costs 3x a plain one, so these are plain slotted
# dataclasses that are hashable by value and never mutated (treat them as frozen).
@dataclass(slots=True, unsafe_hash=True)
class ProviderInfo:
    """A provider in a PROVIDERS answer: its node id and where its mirror listens.

    ``more`` holds the provider's other addresses, best first, as
    :attr:`Contact.more <spegel_kademlia.ids.Contact.more>` (ports are mirror ports).
    """

    node_id: bytes
    host: str
    port: int
    more: tuple[tuple[str, int], ...] = ()

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every ``(host, mirror port)``, the preferred one first."""
        return ((self.host, self.port), *self.more)


_LABELS = {member: member.name.lower() for member in MessageType}


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; answered by :class:`Pong`."""


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to :class:`Ping`."""


@dataclass(frozen=True, slots=True)
class FindNode:
    """Ask for the contacts closest to ``target``; answered by :class:`Nodes`."""

    target: bytes


@dataclass(frozen=True, slots=True)
class Nodes:
    """Contacts closest to a FIND_NODE target, closest first."""

    contacts: tuple[Contact, ...] = ()


@dataclass(frozen=True, slots=True)
class AddProvider:
    """Record that the sender provides ``key`` for ``ttl`` seconds (0: remove the record)."""

    key: bytes
    provider_id: bytes
    mirror_port: int
    ttl: int


@dataclass(frozen=True, slots=True)
class AddProviderAck:
    """Answer to :class:`AddProvider`; ``accepted`` is False when the store was full."""

    accepted: bool = True


@dataclass(frozen=True, slots=True)
class GetProviders:
    """Ask for providers of ``key`` (up to ``wanted``) and closer contacts."""

    key: bytes
    wanted: int = 3


@dataclass(frozen=True, slots=True)
class Providers:
    """Known providers of a key, and contacts closer to it, each list best first."""

    providers: tuple[ProviderInfo, ...] = ()
    contacts: tuple[Contact, ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """Claim ``key`` (single flight; :mod:`spegel_kademlia.claims`), or leave its flight.

    ``ttl_ms`` 0 releases the claim (no reply). ``fanout`` is the most children a
    parent may feed. The claimant is the sender, at the datagram's source address.
    """

    key: bytes
    fanout: int
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class ClaimReply:
    """Answer to :class:`Claim`: ``go`` or join under ``parent``; ``fetcher`` is the root.

    ``parent`` is None when ``go``. Ports are mirror ports.
    """

    go: bool
    depth: int
    ttl_ms: int
    fetcher: ProviderInfo
    parent: ProviderInfo | None = None


@dataclass(frozen=True, slots=True)
class Echo:
    """Return a cookie to the node that put it in an answer (address validation).

    Sent by a requester whose answer carried a cookie; the cookie travels in the
    envelope (:attr:`Message.cookie`). Not answered. See :mod:`spegel_kademlia.admission`.
    """


Body = (Ping | Pong | FindNode | Nodes | AddProvider | AddProviderAck | GetProviders | Providers
        | Claim | ClaimReply | Echo)

_TYPES: dict[type[Any], MessageType] = {
    Ping: MessageType.PING,
    Pong: MessageType.PONG,
    FindNode: MessageType.FIND_NODE,
    Nodes: MessageType.NODES,
    AddProvider: MessageType.ADD_PROVIDER,
    AddProviderAck: MessageType.ADD_PROVIDER_ACK,
    GetProviders: MessageType.GET_PROVIDERS,
    Providers: MessageType.PROVIDERS,
    Claim: MessageType.CLAIM,
    ClaimReply: MessageType.CLAIM_ANSWER,
    Echo: MessageType.ECHO,
}
#: Types that answer a request (matched by request id).
RESPONSE_TYPES = frozenset(
    {MessageType.PONG, MessageType.NODES, MessageType.ADD_PROVIDER_ACK, MessageType.PROVIDERS,
     MessageType.CLAIM_ANSWER}
)


@dataclass(slots=True, unsafe_hash=True)
class Message:
    """One datagram: the header fields and a body.

    ``source_host``/``source_port`` are where a decoded datagram came from (empty for a
    message about to be sent); ``size`` is a decoded datagram's length in bytes (0 for a
    message about to be sent). ``cookie`` is an address-validation cookie carried in the
    envelope (empty: none).
    """

    body: Body
    request_id: int
    sender: bytes
    mirror_port: int
    source_host: str = ""
    source_port: int = 0
    cookie: bytes = b""
    size: int = 0

    @property
    def type(self) -> MessageType:
        """The message type of the body."""
        return _TYPES[type(self.body)]

    @property
    def is_response(self) -> bool:
        """Whether this message answers a request."""
        return self.type in RESPONSE_TYPES


def message_type(body: Body) -> MessageType:
    """The message type of a body."""
    return _TYPES[type(body)]
