"""What registration hooks fill: discovery sources and metrics sinks."""

from __future__ import annotations

import logging

from spegel_core.errors import PluginError
from spegel_core.protocols import Discovery, MetricEvent, MetricsSink

log = logging.getLogger(__name__)


def _described(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class DiscoveryRegistry:
    """Bootstrap sources added by ``spegel_register_discovery``, keyed by kind.

    A kind is the value of ``--bootstrap-kind`` that selects a source; it has exactly
    one owner. Unlike the content store and the router, discovery is not
    ``firstresult`` (several kinds run together), so a second registration of a kind
    is not an override but a clash: :class:`~spegel_core.errors.PluginError`, which
    the CLI prints as one line and exits with code 2. To replace a built-in kind,
    disable the built-in plugin (``--disable-plugin dns``).
    """

    def __init__(self) -> None:
        self._sources: dict[str, Discovery] = {}

    def add(self, kind: str, discovery: Discovery) -> None:
        """Register ``discovery`` as the source of bootstrap kind ``kind``.

        :param kind: the ``--bootstrap-kind`` value; by convention equal to
            ``discovery.name``, which is what logs and status show.
        :param discovery: an object implementing :class:`~spegel_core.protocols.Discovery`.
        :raises PluginError: ``kind`` is empty or taken, or ``discovery`` is not a Discovery.
        """
        if not isinstance(kind, str) or not kind:
            raise PluginError(f"bootstrap kind of {_described(discovery)} must be a "
                              f"non-empty string, got {kind!r}")
        if not isinstance(discovery, Discovery):
            raise PluginError(f"bootstrap kind {kind!r}: {_described(discovery)} does not "
                              "implement Discovery (name, refresh_interval, bootstrap_peers, "
                              "aclose)")
        if kind in self._sources:
            raise PluginError(
                f"bootstrap kind {kind!r} is registered twice, by "
                f"{_described(self._sources[kind])} and {_described(discovery)}; keep one "
                "with --disable-plugin NAME (see `spegel plugins`)"
            )
        self._sources[kind] = discovery

    @property
    def kinds(self) -> list[str]:
        """The registered kinds, in registration order."""
        return list(self._sources)

    @property
    def sources(self) -> list[Discovery]:
        """The registered sources, in registration order."""
        return list(self._sources.values())


class MetricsRegistry:
    """Sinks added by ``spegel_register_metrics``."""

    def __init__(self) -> None:
        self.sinks: list[MetricsSink] = []

    def add(self, sink: MetricsSink) -> None:
        """Add a sink; its ``emit(event)`` receives every metric event of the node.

        :raises TypeError: ``sink`` has no callable ``emit``.
        """
        if not callable(getattr(sink, "emit", None)):
            raise TypeError(f"metrics sink {sink!r} has no emit(event) method")
        self.sinks.append(sink)


class MetricsHub:
    """Fans events out to every sink; a failing sink is logged once and never raises."""

    def __init__(self, sinks: list[MetricsSink] | None = None) -> None:
        self.sinks = list(sinks or [])
        self._failed: set[int] = set()

    def emit(self, event: MetricEvent) -> None:
        """Hand ``event`` to every sink; a sink's exception is logged once and dropped."""
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # observer errors never reach the request path
                if id(sink) not in self._failed:
                    self._failed.add(id(sink))
                    log.exception("metrics sink %r failed; further errors are not logged", sink)

    def __repr__(self) -> str:
        return f"<MetricsHub sinks={len(self.sinks)}>"
