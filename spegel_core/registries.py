"""What registration hooks fill: discovery sources and metrics sinks."""

from __future__ import annotations

import logging

from spegel_core.protocols import Discovery, MetricEvent, MetricsSink

log = logging.getLogger(__name__)


class DiscoveryRegistry:
    """Bootstrap sources added by ``spegel_register_discovery``, keyed by kind."""

    def __init__(self) -> None:
        self._sources: dict[str, Discovery] = {}

    def add(self, kind: str, discovery: Discovery) -> None:
        if kind in self._sources:
            raise ValueError(f"bootstrap kind {kind!r} registered twice")
        self._sources[kind] = discovery

    @property
    def kinds(self) -> list[str]:
        return list(self._sources)

    @property
    def sources(self) -> list[Discovery]:
        return list(self._sources.values())


class MetricsRegistry:
    """Sinks added by ``spegel_register_metrics``."""

    def __init__(self) -> None:
        self.sinks: list[MetricsSink] = []

    def add(self, sink: MetricsSink) -> None:
        if not callable(getattr(sink, "emit", None)):
            raise TypeError(f"metrics sink {sink!r} has no emit(event) method")
        self.sinks.append(sink)


class MetricsHub:
    """Fans events out to every sink; a failing sink is logged once and never raises."""

    def __init__(self, sinks: list[MetricsSink] | None = None) -> None:
        self.sinks = list(sinks or [])
        self._failed: set[int] = set()

    def emit(self, event: MetricEvent) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # observer errors never reach the request path
                if id(sink) not in self._failed:
                    self._failed.add(id(sink))
                    log.exception("metrics sink %r failed; further errors are not logged", sink)

    def __repr__(self) -> str:
        return f"<MetricsHub sinks={len(self.sinks)}>"
