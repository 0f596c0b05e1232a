"""The ``oci-layout`` plugin: settings and hooks of the embedded default content store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import Field

from spegel_core import hookimpl
from spegel_core.config import Duration, SettingsRegistry, SpegelConfig, SpegelSettings
from spegel_core.errors import ConfigError
from spegel_core.protocols import MetricsSink
from spegel_oci_layout.store import OCILayoutStore

log = logging.getLogger(__name__)

__all__ = [
    "STORE_NAME",
    "OCILayoutSettings",
    "spegel_add_settings",
    "spegel_configure",
    "spegel_make_content_store",
]

#: The value of ``--content-store`` that selects this store.
STORE_NAME = "oci-layout"
_PATH_FLAG = "--oci-layout-path"


class OCILayoutSettings(SpegelSettings):
    """Settings of the OCI-layout content store."""

    oci_layout_path: Path | None = Field(
        default=None,
        description="OCI image layout directory to serve (with --content-store oci-layout).",
    )
    oci_layout_poll_interval: Duration = Field(
        default=1.0, gt=0, description="How often to check the layout for changes (e.g. 1s)."
    )


def _selected(config: SpegelConfig) -> bool:
    return config.core.content_store == STORE_NAME


def _layout_path(config: SpegelConfig) -> Path:
    path = config.get(OCILayoutSettings).oci_layout_path
    if path is None:
        raise ConfigError(_PATH_FLAG, f"required with --content-store {STORE_NAME}")
    return path


@hookimpl
def spegel_add_settings(registry: SettingsRegistry) -> None:
    """Declare :class:`OCILayoutSettings`."""
    registry.add(OCILayoutSettings, owner=STORE_NAME)


@hookimpl
def spegel_configure(config: SpegelConfig) -> None:
    """Check the layout directory when this store is selected.

    A directory without ``index.json`` is fine (an empty layout that images may be
    added to later); an ``index.json`` that is not JSON is refused.
    """
    if not _selected(config):
        return
    path = _layout_path(config)
    if not path.exists():
        raise ConfigError(_PATH_FLAG, f"{path} does not exist")
    if not path.is_dir():
        raise ConfigError(_PATH_FLAG, f"{path} is not a directory")
    index = path / "index.json"
    try:
        document = json.loads(index.read_bytes())
    except FileNotFoundError:
        log.info("%s has no index.json yet; serving an empty layout", path)
        return
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(_PATH_FLAG, f"{index} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
        raise ConfigError(_PATH_FLAG, f"{index} is not an OCI image index")


@hookimpl(trylast=True)
def spegel_make_content_store(config: SpegelConfig,
                              metrics: MetricsSink) -> OCILayoutStore | None:
    """An :class:`OCILayoutStore` when ``--content-store oci-layout``, else None."""
    if not _selected(config):
        return None
    settings = config.get(OCILayoutSettings)
    return OCILayoutStore(_layout_path(config), poll_interval=settings.oci_layout_poll_interval,
                          metrics=metrics)
