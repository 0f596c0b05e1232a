"""Flags of the Go original (Spegel v0.7.x) that have no equivalent here.

Its chart writes them, so they are accepted and its command lines run (docs/migrating.md).

- ``--resolve-latest-tag=false`` does what the original does: it adds the filter
  ``:latest$`` (``latest`` tags are neither resolved nor advertised).
- ``--containerd-registry-config-path`` on ``registry``: the original checks
  containerd's configuration against it; here ``spegel configuration`` writes there
  and the containerd store reads containerd's own ``config_path`` (start-up warnings).
- ``--otel-*``: OpenTelemetry tracing is not implemented; ``--otel-enabled=true`` is
  said once at start.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from spegel_core.config import SpegelConfig, SpegelSettings

#: What ``--resolve-latest-tag=false`` adds to ``--registry-filters``.
LATEST_FILTER = ":latest$"


class GoCompatSettings(SpegelSettings):
    """Accepted for the Go original's command lines (docs/migrating.md)."""

    resolve_latest_tag: bool = Field(
        default=True, description="Deprecated in the Go original: false adds the registry "
        "filter ':latest$'.")
    containerd_registry_config_path: Path | None = Field(
        default=None, description="Accepted for the Go original's command line; the "
        "registry does not use it (spegel configuration does).")
    otel_enabled: bool = Field(default=False, description="Not implemented: accepted, "
                               "said at start.")
    otel_endpoint: str | None = Field(default=None, description="Not implemented.")
    otel_service_name: str | None = Field(default=None, description="Not implemented.")
    otel_sampler: str | None = Field(default=None, description="Not implemented.")
    otel_insecure: bool = Field(default=False, description="Not implemented.")


def filter_patterns(config: SpegelConfig) -> list[str]:
    """``--registry-filters``, plus ``:latest$`` with ``--resolve-latest-tag=false``."""
    patterns = list(config.core.registry_filters)
    compat = config.sections.get(GoCompatSettings)
    if isinstance(compat, GoCompatSettings) and not compat.resolve_latest_tag:
        patterns.append(LATEST_FILTER)
    return patterns


def compat_notes(config: SpegelConfig) -> list[str]:
    """What to tell at start about the Go original's flags."""
    compat = config.sections.get(GoCompatSettings)
    if not isinstance(compat, GoCompatSettings):
        return []
    notes = []
    if compat.otel_enabled:
        notes.append("--otel-enabled: OpenTelemetry tracing is not implemented here; the "
                     "--otel-* flags are ignored (docs/migrating.md)")
    if not compat.resolve_latest_tag:
        notes.append("--resolve-latest-tag=false is deprecated (as in the Go original): "
                     "it adds the registry filter ':latest$'")
    return notes
