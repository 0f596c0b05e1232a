"""A thin typed gRPC client for the few containerd calls spegel makes.

Calls go over ``grpc.aio`` to ``unix://<socket>`` with the namespace in the
``containerd-namespace`` metadata. Method paths are containerd's API v1 (the
services in ``_pb/*.proto`` declare the same ones; a unit test checks that).
gRPC errors are mapped at this edge: ``NOT_FOUND`` becomes ``None`` or
:class:`~spegel_core.errors.BlobUnknown`, every other failure
:class:`ContainerdUnavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import empty_pb2

from spegel_containerd._pb import content_pb2, events_pb2, images_pb2, version_pb2
from spegel_core.errors import BlobUnknown, StoreUnavailable

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "ContainerdClient",
    "ContainerdUnavailable",
]

#: Method paths of the calls made (service full name / method).
METHODS = {
    "version": "/containerd.services.version.v1.Version/Version",
    "images_get": "/containerd.services.images.v1.Images/Get",
    "images_list": "/containerd.services.images.v1.Images/List",
    "content_info": "/containerd.services.content.v1.Content/Info",
    "content_list": "/containerd.services.content.v1.Content/List",
    "content_read": "/containerd.services.content.v1.Content/Read",
    "events_subscribe": "/containerd.services.events.v1.Events/Subscribe",
}

M = TypeVar("M")


class ContainerdUnavailable(StoreUnavailable):
    """containerd did not answer (socket missing, daemon down, permission denied...)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.grpc_code = code


def _unavailable(exc: grpc.aio.AioRpcError, what: str) -> ContainerdUnavailable:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    details = (exc.details() or "").strip()
    return ContainerdUnavailable(f"containerd {what}: {name}: {details}", code=name)


def _not_found(exc: grpc.aio.AioRpcError) -> bool:
    return bool(exc.code() == grpc.StatusCode.NOT_FOUND)


def _options(max_backoff: float) -> list[tuple[str, int]]:
    backoff_ms = max(100, int(max_backoff * 1000))
    return [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
        # Content.Read sends 1 MiB chunks; Images.List of a big node can be large.
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]


class ContainerdClient:
    """One ``grpc.aio`` channel to a containerd socket, scoped to one namespace.

    :param socket: path of containerd's gRPC socket.
    :param namespace: the containerd namespace (``k8s.io`` for Kubernetes).
    :param timeout: deadline of unary calls and of the first answer of streams, seconds.
    :param max_backoff: cap of gRPC's own reconnect backoff, seconds.
    """

    def __init__(self, socket: Path, namespace: str, *, timeout: float = 10.0,
                 max_backoff: float = 5.0) -> None:
        self.socket = Path(socket)
        self.namespace = namespace
        self.timeout = timeout
        self._metadata = (("containerd-namespace", namespace),)
        self._channel = grpc.aio.insecure_channel(f"unix://{self.socket}",
                                                  options=_options(max_backoff))
        self._closed = False

    async def aclose(self) -> None:
        """Close the channel (cancels open streams); idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._channel.close()

    def _unary(self, name: str, request_type: Any, response_type: type[M]) -> Any:
        return self._channel.unary_unary(
            METHODS[name], request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString)  # type: ignore[attr-defined]

    def _stream(self, name: str, request_type: Any, response_type: type[M]) -> Any:
        return self._channel.unary_stream(
            METHODS[name], request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString)  # type: ignore[attr-defined]

    async def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc, what) from exc

    # -- calls ---------------------------------------------------------------------
    async def version(self) -> tuple[str, str]:
        """``(version, revision)`` of the daemon."""
        method = self._unary("version", empty_pb2.Empty, version_pb2.VersionResponse)
        response = await self._call("Version", lambda: method(empty_pb2.Empty(),
                                                              timeout=self.timeout))
        return str(response.version), str(response.revision)

    async def list_images(self, filters: Sequence[str] = ()) -> list[images_pb2.Image]:
        """Every image record of the namespace (matching any of ``filters``)."""
        method = self._unary("images_list", images_pb2.ListImagesRequest,
                             images_pb2.ListImagesResponse)
        request = images_pb2.ListImagesRequest(filters=list(filters))
        response = await self._call("Images.List", lambda: method(
            request, metadata=self._metadata, timeout=self.timeout))
        return list(response.images)

    async def get_image(self, name: str) -> images_pb2.Image | None:
        """The image record called ``name``, or None."""
        method = self._unary("images_get", images_pb2.GetImageRequest,
                             images_pb2.GetImageResponse)
        try:
            response = await method(images_pb2.GetImageRequest(name=name),
                                    metadata=self._metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if _not_found(exc):
                return None
            raise _unavailable(exc, "Images.Get") from exc
        image: images_pb2.Image = response.image
        return image

    async def content_info(self, digest: str) -> content_pb2.Info | None:
        """What the namespace's content store knows about ``digest``, or None."""
        method = self._unary("content_info", content_pb2.InfoRequest, content_pb2.InfoResponse)
        try:
            response = await method(content_pb2.InfoRequest(digest=digest),
                                    metadata=self._metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if _not_found(exc):
                return None
            raise _unavailable(exc, "Content.Info") from exc
        info: content_pb2.Info = response.info
        return info

    async def list_content(self) -> list[content_pb2.Info]:
        """Every committed blob of the namespace."""
        method = self._stream("content_list", content_pb2.ListContentRequest,
                              content_pb2.ListContentResponse)
        found: list[content_pb2.Info] = []
        try:
            async for response in method(content_pb2.ListContentRequest(),
                                         metadata=self._metadata, timeout=self.timeout * 6):
                found.extend(response.info)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc, "Content.List") from exc
        return found

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """Stream ``size`` bytes (0: to the end) of ``digest`` from ``offset``.

        Raises :class:`BlobUnknown` when the namespace does not hold ``digest``.
        """
        method = self._stream("content_read", content_pb2.ReadContentRequest,
                              content_pb2.ReadContentResponse)
        request = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
        call = method(request, metadata=self._metadata)
        try:
            async for response in call:
                if response.data:
                    yield bytes(response.data)
        except grpc.aio.AioRpcError as exc:
            if _not_found(exc):
                raise BlobUnknown(f"blob {digest} is not in containerd") from exc
            raise _unavailable(exc, "Content.Read") from exc
        finally:
            call.cancel()

    def subscribe(self, filters: Sequence[str]) -> Any:
        """Open an ``Events.Subscribe`` stream (an async iterator of ``Envelope``).

        The caller iterates it, maps :class:`grpc.aio.AioRpcError` and cancels it.
        """
        method = self._stream("events_subscribe", events_pb2.SubscribeRequest,
                              events_pb2.Envelope)
        return method(events_pb2.SubscribeRequest(filters=list(filters)))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ContainerdClient {state} socket={str(self.socket)!r} ns={self.namespace!r}>"
