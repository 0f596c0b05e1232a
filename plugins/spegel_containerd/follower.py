"""Following containerd: the connection, its events, and what they mean for the store.

:class:`EventFollower` is a mixin of :class:`~spegel_containerd.store.ContainerdStore`:
a background task keeps an ``Events.Subscribe`` stream open, turns image and content
events into :class:`~spegel_core.protocols.StoreEvent` objects (walking each new image for
the content it brought, re-listing content after a deletion), and reconnects with
backoff when the stream breaks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import grpc.aio

from spegel_containerd.checks import ContainerdTooOld, check_version
from spegel_containerd.client import ContainerdClient, ContainerdUnavailable
from spegel_containerd.events import decode_envelope, subscribe_filters
from spegel_containerd.walker import ImageWalker
from spegel_core.errors import OCIError, StoreUnavailable
from spegel_core.oci.digest import is_digest
from spegel_core.oci.reference import Reference
from spegel_core.protocols import MetricsSink, StoreEvent, StoreEventKind
from spegel_core.store_kit import StoreLifecycle

log = logging.getLogger(__name__)

#: How often a disconnected store looks for a new socket while it waits to retry.
SOCKET_POLL = 0.05


def tag_reference(name: str) -> Reference | None:
    """The tag reference an image name is, or None (ids, digest references, short names).

    Only names that are already in normalised form (``docker.io/library/x:v1``)
    count, so ``resolve`` finds them again by the same name.
    """
    try:
        reference = Reference.parse(name)
    except OCIError:
        return None
    if reference.tag is None or reference.digest is not None or str(reference) != name:
        return None
    return reference


class EventFollower:
    """The event-following half of the store (a mixin: the store sets the attributes)."""

    socket: Path
    namespace: str
    metrics: MetricsSink | None
    reconnect_min_backoff: float
    reconnect_max_backoff: float
    gc_delay: float
    _factory: Callable[[Path, str], ContainerdClient]
    _client: ContainerdClient | None
    _life: StoreLifecycle
    _connections: int
    _failed: bool
    _version: str
    _first_attempt: asyncio.Event
    _checker: asyncio.Task[None] | None
    _walker: ImageWalker
    _images: dict[str, str]
    _known: set[str]

    if TYPE_CHECKING:
        async def _list_images(self, client: ContainerdClient) -> object: ...

        async def _read_manifest(self, client: ContainerdClient, digest: str
                                 ) -> bytes | None: ...

    # -- the watcher -----------------------------------------------------------------
    async def _watch(self) -> None:
        delay = self.reconnect_min_backoff
        client = self._client
        while not self._life.closed:
            if client is None:
                client = self._factory(self.socket, self.namespace)
            try:
                await self._session(client)
                detail = "containerd closed the event stream"
            except ContainerdTooOld as exc:
                detail = str(exc)
                delay = self.reconnect_max_backoff
            except (ContainerdUnavailable, StoreUnavailable) as exc:
                detail = str(exc)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                detail = f"containerd events: {code.name if code else 'UNKNOWN'}: {exc.details()}"
            except asyncio.CancelledError:
                if client is not self._client:
                    await asyncio.shield(client.aclose())
                raise
            except Exception as exc:  # the watcher must outlive any surprise
                log.exception("containerd event handling failed; reconnecting")
                detail = f"unexpected error: {exc}"
            self._disconnected(detail)
            if client is not self._client:
                await client.aclose()
            client = None
            if await self._wait_retry(delay):
                delay = self.reconnect_min_backoff
            else:
                delay = min(delay * 2, self.reconnect_max_backoff)

    async def _session(self, client: ContainerdClient) -> None:
        """One connection: check, subscribe, list, then handle events until the stream ends."""
        version, _ = await client.version()
        check_version(version, self.socket)
        stream = client.subscribe(subscribe_filters(self.namespace))
        try:
            old, self._client = self._client, client
            if old is not None and old is not client:
                await old.aclose()
            await self._prime(client)
            self._version = version
            self._became_connected()
            async for envelope in stream:
                await self._on_envelope(client, envelope)
        finally:
            stream.cancel()

    def _became_connected(self) -> None:
        resync = self._connections > 0 or self._failed
        self._connections += 1
        # Always a change: a session follows the start or _disconnected.
        self._life.set_connected(True, metrics=self.metrics)
        self._first_attempt.set()
        if resync:
            log.info("containerd %s at %s is back; listing again", self._version, self.socket)
            self._life.publish(StoreEvent(StoreEventKind.RESYNC))

    def _disconnected(self, detail: str) -> None:
        if self._life.connected:
            log.warning("store disconnected: %s; reconnecting", detail)
        elif detail != self._life.detail:
            log.error("containerd at %s is not usable: %s; retrying", self.socket, detail)
        self._life.set_connected(False, detail, metrics=self.metrics)
        self._failed = True
        self._first_attempt.set()

    def _socket_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.socket)
        except OSError:
            return None
        return info.st_ino, info.st_ctime_ns

    async def _wait_retry(self, delay: float) -> bool:
        """Sleep ``delay`` s; return True early when a new socket appears (a new daemon)."""
        before = self._socket_identity()
        deadline = time.monotonic() + delay
        while not self._life.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(SOCKET_POLL, remaining))
            now = self._socket_identity()
            if now is not None and now != before:
                return True
        return False

    async def _prime(self, client: ContainerdClient) -> None:
        """Learn every image and the content held (media types for ``stat``)."""
        self._walker.absent.clear()
        await self._list_images(client)
        self._known = {info.digest for info in await client.list_content()
                       if is_digest(info.digest)}

    # -- events ------------------------------------------------------------------------
    async def _on_envelope(self, client: ContainerdClient, envelope: object) -> None:
        event = decode_envelope(envelope, self.namespace)  # type: ignore[arg-type]
        if event is None:
            return
        if event.kind is StoreEventKind.IMAGE_CREATED:
            await self._image_created(client, event.subject)
        elif event.kind is StoreEventKind.IMAGE_DELETED:
            self._image_deleted(event.subject)
        elif is_digest(event.subject):
            if event.kind is StoreEventKind.CONTENT_CREATED:
                self._known.add(event.subject)
            else:
                self._known.discard(event.subject)
            self._life.publish(StoreEvent(event.kind, event.subject))

    async def _image_created(self, client: ContainerdClient, name: str) -> None:
        image = await client.get_image(name)
        if image is None or not is_digest(image.target.digest):
            return
        digest = image.target.digest
        self._images[name] = digest
        await self._walker.walk(partial(self._read_manifest, client), digest,
                                image.target.media_type or None, fresh=True)
        tree = self._walker.tree(digest)
        if tree - self._known - self._walker.absent:  # else another name of known content
            held = {info.digest for info in await client.list_content()
                    if is_digest(info.digest)} & tree
            for new in sorted(held - self._known):
                self._life.publish(StoreEvent(StoreEventKind.CONTENT_CREATED, new))
            self._known |= held
        reference = tag_reference(name)
        if reference is not None:
            self._life.publish(StoreEvent(StoreEventKind.IMAGE_CREATED, name, digest))

    def _image_deleted(self, name: str) -> None:
        digest = self._images.pop(name, None)
        if tag_reference(name) is not None:
            self._life.publish(StoreEvent(StoreEventKind.IMAGE_DELETED, name, digest))
        if self._checker is None or self._checker.done():
            self._checker = asyncio.create_task(self._check_content(),
                                                name="containerd-content-check")

    async def _check_content(self) -> None:
        """After the garbage collector had time: announce content that came or went."""
        for wait in (self.gc_delay, self.gc_delay * 9):
            await asyncio.sleep(wait)
            client = self._client
            if client is None or not self._life.connected:
                return
            try:
                held = {info.digest for info in await client.list_content()
                        if is_digest(info.digest)}
            except StoreUnavailable:
                return  # the watcher reconnects and publishes RESYNC
            for gone in sorted(self._known - held):
                self._life.publish(StoreEvent(StoreEventKind.CONTENT_DELETED, gone))
            for new in sorted(held - self._known):
                self._life.publish(StoreEvent(StoreEventKind.CONTENT_CREATED, new))
            self._known = held
