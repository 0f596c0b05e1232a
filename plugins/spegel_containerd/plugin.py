"""The ``containerd`` plugin: settings and hooks of the containerd content store."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from spegel_core import hookimpl
from spegel_core.config import Duration, SettingsRegistry, SpegelConfig, SpegelSettings
from spegel_core.protocols import MetricsSink

if TYPE_CHECKING:
    from spegel_containerd.store import ContainerdStore

# grpc and the generated messages (about 9 MB of RSS) are imported only when the
# containerd store is selected: a node on another store does not pay for them.

log = logging.getLogger(__name__)

__all__ = [
    "STORE_NAME",
    "ContainerdSettings",
    "spegel_add_settings",
    "spegel_configure",
    "spegel_make_content_store",
]

#: The value of ``--content-store`` that selects this store.
STORE_NAME = "containerd"
#: containerd's rule for namespace names: labels of letters and digits joined by . _ -
_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


class ContainerdSettings(SpegelSettings):
    """Settings of the containerd content store."""

    containerd_sock: Path = Field(
        default=Path("/run/containerd/containerd.sock"),
        description="containerd's gRPC socket (with --content-store containerd).",
    )
    containerd_namespace: str = Field(
        default="k8s.io", description="containerd namespace holding the node's images."
    )
    containerd_content_path: Path = Field(
        default=Path("/var/lib/containerd/io.containerd.content.v1.content"),
        description="containerd's content directory; blobs are served from it zero-copy.",
    )
    containerd_reconnect_max_backoff: Duration = Field(
        default=5.0, gt=0, description="Longest wait between reconnections to containerd (e.g. 5s)."
    )

    @field_validator("containerd_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if len(value) > 76 or not _NAMESPACE.fullmatch(value):
            raise ValueError(f"invalid containerd namespace {value[:80]!r}")
        return value


def _selected(config: SpegelConfig) -> bool:
    return config.core.content_store == STORE_NAME


@hookimpl
def spegel_add_settings(registry: SettingsRegistry) -> None:
    """Declare :class:`ContainerdSettings`."""
    registry.add(ContainerdSettings, owner=STORE_NAME)


@hookimpl
def spegel_configure(config: SpegelConfig) -> None:
    """Check the socket, containerd's version and the namespace when this store is selected.

    A missing socket is logged, not fatal (containerd may start after spegel);
    an unusable socket or a containerd older than 1.6 raises ``ConfigError``.
    """
    if not _selected(config):
        return
    settings = config.get(ContainerdSettings)
    from spegel_containerd.checks import startup_checks

    startup_checks(settings.containerd_sock, settings.containerd_namespace,
                   settings.containerd_content_path)


@hookimpl(trylast=True)
def spegel_make_content_store(config: SpegelConfig,
                              metrics: MetricsSink) -> ContainerdStore | None:
    """A :class:`ContainerdStore` when ``--content-store containerd``, else None."""
    if not _selected(config):
        return None
    settings = config.get(ContainerdSettings)
    from spegel_containerd.store import ContainerdStore

    return ContainerdStore(settings.containerd_sock, settings.containerd_namespace,
                           settings.containerd_content_path,
                           reconnect_max_backoff=settings.containerd_reconnect_max_backoff,
                           watch_ingests=config.core.advertise_arriving,
                           metrics=metrics)
