"""Decoding containerd's event envelopes (pure functions, no I/O).

containerd streams :class:`Envelope` messages whose ``event`` is a
``google.protobuf.Any`` with a bare ``type_url`` such as
``containerd.services.images.v1.ImageCreate`` (no ``type.googleapis.com/``
prefix, so ``Any.Unpack`` does not work): payloads are decoded by type_url.
The namespace metadata does not filter ``Events.Subscribe``; the filters of
:func:`subscribe_filters` do (filters in the list are ORed, the comma inside
one filter is AND).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from spegel_containerd._pb import content_events_pb2, events_pb2, images_pb2
from spegel_core.protocols import StoreEventKind

log = logging.getLogger(__name__)

__all__ = ["TOPICS", "ContainerdEvent", "decode_envelope", "subscribe_filters"]

_PREFIX = "type.googleapis.com/"

#: Topic -> what it means for the store, and the payload type the envelope carries.
TOPICS: dict[str, tuple[StoreEventKind, Any]] = {
    "/images/create": (StoreEventKind.IMAGE_CREATED, images_pb2.ImageCreate),
    "/images/update": (StoreEventKind.IMAGE_CREATED, images_pb2.ImageUpdate),
    "/images/delete": (StoreEventKind.IMAGE_DELETED, images_pb2.ImageDelete),
    "/content/create": (StoreEventKind.CONTENT_CREATED, content_events_pb2.ContentCreate),
    "/content/delete": (StoreEventKind.CONTENT_DELETED, content_events_pb2.ContentDelete),
}


@dataclass(frozen=True, slots=True)
class ContainerdEvent:
    """One decoded event: an image name (image events) or a digest (content events)."""

    topic: str
    kind: StoreEventKind
    #: The image name for image events, the digest for content events.
    subject: str


def subscribe_filters(namespace: str) -> list[str]:
    """The ``Events.Subscribe`` filters for image and content events of ``namespace``."""
    return [f'namespace=="{namespace}",topic~="^/images/"',
            f'namespace=="{namespace}",topic~="^/content/"']


def _full_name(type_url: str) -> str:
    return type_url.removeprefix(_PREFIX)


def decode_envelope(envelope: events_pb2.Envelope, namespace: str) -> ContainerdEvent | None:
    """The event in ``envelope``, or None if it is of another namespace, topic or type.

    Never raises for a malformed payload: it is logged and skipped.
    """
    if envelope.namespace != namespace:
        return None
    known = TOPICS.get(envelope.topic)
    if known is None:
        return None
    kind, payload_type = known
    type_name = _full_name(envelope.event.type_url)
    if type_name != payload_type.DESCRIPTOR.full_name:
        log.debug("containerd event %s carries %r, expected %s; skipped", envelope.topic,
                  type_name, payload_type.DESCRIPTOR.full_name)
        return None
    try:
        payload = payload_type.FromString(envelope.event.value)
    except DecodeError as exc:
        log.warning("undecodable containerd event %s: %s", envelope.topic, exc)
        return None
    subject = payload.name if kind in (StoreEventKind.IMAGE_CREATED,
                                       StoreEventKind.IMAGE_DELETED) else payload.digest
    if not subject:
        return None
    return ContainerdEvent(envelope.topic, kind, str(subject))
