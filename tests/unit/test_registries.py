"""The registries the registration hooks fill: clashes are plain PluginErrors."""

from __future__ import annotations

import pytest

from spegel_core.errors import PluginError
from spegel_core.registries import DiscoveryRegistry
from spegel_core.testing.fakes import StaticListDiscovery


def test_a_kind_has_one_owner() -> None:
    registry = DiscoveryRegistry()
    first = StaticListDiscovery(name="a")
    registry.add("a", first)
    with pytest.raises(PluginError, match="bootstrap kind 'a' is registered twice"):
        registry.add("a", StaticListDiscovery(name="a"))
    assert registry.kinds == ["a"] and registry.sources == [first]


@pytest.mark.parametrize("kind", ["", None])
def test_a_kind_is_a_non_empty_string(kind: object) -> None:
    with pytest.raises(PluginError, match="non-empty string"):
        DiscoveryRegistry().add(kind, StaticListDiscovery())  # type: ignore[arg-type]


def test_a_source_must_implement_discovery() -> None:
    with pytest.raises(PluginError, match="does not implement Discovery"):
        DiscoveryRegistry().add("x", object())  # type: ignore[arg-type]
