"""Start-up checks of the containerd store, with errors that say what to fix.

Run by the plugin's ``spegel_configure`` when ``--content-store containerd`` is
chosen, before the mirror starts:

- no socket at ``--containerd-sock``: logged as an error, *not* fatal. A node
  often starts before containerd does; the store keeps retrying and the node
  stays not ready until containerd answers (no crash loop).
- the path is not a socket, or the socket cannot be opened (permission
  denied): :class:`ConfigError`, exit code 2. Retrying would not help.
- containerd older than 1.6: :class:`ConfigError` (the store also refuses it,
  and stays not ready, if an old daemon appears later).
- the namespace has no images: a warning (a new node has none yet; a wrong
  ``--containerd-namespace`` looks the same).
- the content directory cannot be read: a warning; blobs are then streamed over gRPC.
- CRI configuration that keeps pulls from the mirror (no ``config_path``, containerd
  2.x's transfer service, ``discard_unpacked_layers``): warnings, see ``cri_config``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import grpc
from google.protobuf import empty_pb2

from spegel_containerd._pb import images_pb2, version_pb2
from spegel_containerd.client import METHODS, ContainerdUnavailable
from spegel_core.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "MIN_VERSION",
    "ContainerdTooOld",
    "check_socket",
    "check_version",
    "parse_version",
    "startup_checks",
]

#: The oldest containerd whose API has every call and event filter used here.
MIN_VERSION = (1, 6)
SOCK_FLAG = "--containerd-sock"
_VERSION = re.compile(r"v?(\d+)\.(\d+)")


class ContainerdTooOld(ContainerdUnavailable):
    """containerd answered, but is older than :data:`MIN_VERSION`."""


def parse_version(text: str) -> tuple[int, int] | None:
    """``(major, minor)`` of ``1.6.20~ds1``, ``v1.7.0-rc.1``, ``2.0.0``; None if unparsable."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    return int(match[1]), int(match[2])


def check_version(version: str, socket: Path) -> None:
    """Raise :class:`ContainerdTooOld` for a containerd older than 1.6.

    An unparsable version (a development build) is accepted with a debug log.
    """
    parsed = parse_version(version)
    if parsed is None:
        log.debug("cannot parse containerd version %r; assuming it is recent", version)
        return
    if parsed < MIN_VERSION:
        wanted = ".".join(map(str, MIN_VERSION))
        raise ContainerdTooOld(f"containerd {version} at {socket} is too old: spegel needs "
                               f"containerd >= {wanted}", code="FAILED_PRECONDITION")


def check_socket(socket: Path) -> bool:
    """Whether ``socket`` exists; raises :class:`ConfigError` if it is unusable.

    A missing socket is not an error here (containerd may start later).
    """
    try:
        info = os.stat(socket)
    except FileNotFoundError:
        return False
    except PermissionError as exc:
        raise ConfigError(SOCK_FLAG, f"permission denied looking up {socket}: {exc.strerror}; "
                                     "run spegel as root or mount the socket's directory "
                                     "readable") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(SOCK_FLAG, f"{socket} is not a socket")
    if not os.access(socket, os.R_OK | os.W_OK):
        raise ConfigError(SOCK_FLAG, f"permission denied on {socket}: run spegel as root or "
                                     "give its user read and write access to the socket")
    return True


def _probe(socket: Path, namespace: str, timeout: float) -> tuple[str, int]:
    """The version of containerd and how many images ``namespace`` has (blocking gRPC)."""
    metadata = (("containerd-namespace", namespace),)
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        version_call = channel.unary_unary(
            METHODS["version"], request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=version_pb2.VersionResponse.FromString)
        images_call = channel.unary_unary(
            METHODS["images_list"],
            request_serializer=images_pb2.ListImagesRequest.SerializeToString,
            response_deserializer=images_pb2.ListImagesResponse.FromString)
        version = version_call(empty_pb2.Empty(), timeout=timeout).version
        images = images_call(images_pb2.ListImagesRequest(), metadata=metadata,
                             timeout=timeout).images
    return str(version), len(images)


def startup_checks(socket: Path, namespace: str, content_path: Path | None, *,
                   timeout: float = 3.0) -> None:
    """Check the settings against the running containerd; see the module docstring.

    :raises ConfigError: a problem that retrying cannot fix.
    """
    if not check_socket(socket):
        log.error("no containerd socket at %s (%s): waiting for containerd; the node stays "
                  "not ready until it answers", socket, SOCK_FLAG)
    else:
        try:
            version, images = _probe(socket, namespace, timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            if code == grpc.StatusCode.PERMISSION_DENIED or "ermission denied" in str(details):
                raise ConfigError(SOCK_FLAG, f"permission denied on {socket}: {details}") from None
            log.error("containerd at %s does not answer (%s: %s): retrying in the background",
                      socket, code.name if code else "error", details)
        else:
            try:
                check_version(version, socket)
            except ContainerdTooOld as exc:
                raise ConfigError(SOCK_FLAG, str(exc)) from None
            from spegel_containerd.cri_config import log_mirror_warnings

            log_mirror_warnings(socket, version, timeout)  # config that bypasses the mirror
            if images == 0:
                log.warning("containerd namespace %r has no images yet; if this node's images "
                            "are in another namespace set --containerd-namespace (Kubernetes "
                            "uses k8s.io)", namespace)
    if content_path is not None and not os.access(content_path, os.R_OK | os.X_OK):
        log.warning("containerd content directory %s is not readable (%s); blobs will be "
                    "streamed over gRPC, which is slower", content_path,
                    "missing" if not content_path.exists() else "permission denied")
