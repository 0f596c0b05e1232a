"""deploy/grafana/spegel.json parses and queries only metrics the plugin exports;
docs/metrics.md documents every one of them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spegel_prometheus import EXPORTED, PrometheusSink

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "spegel.json"

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan"}
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",),
             "gauge": ("",)}


def exported_series() -> set[str]:
    """Every series name the plugin's exposition can contain."""
    names = set()
    for family in PrometheusSink().registry.collect():
        names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, [$__rate_interval]
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def _targets(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for panel in panels:
        yield from _targets(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = list(_targets(dashboard["panels"]))
    for variable in dashboard["templating"]["list"]:
        definition = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", definition)
        if match:
            found.append((f"${variable['name']}", match.group(1)))
    return found


def test_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, router) (rate(spegel_resolve_duration_'
            'seconds_bucket{instance=~"$instance",x="a{b}"}[$__rate_interval]))) '
            '/ on(instance) group_left up or vector(0)')
    assert metric_names(expr) == {"spegel_resolve_duration_seconds_bucket", "up"}


def test_dashboard_parses_and_has_the_panels_operators_asked_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    titles = " | ".join(title for title, _ in queries()).lower()
    for wanted in ("hit ratio", "bytes served by source", "resolve latency", "peers",
                   "dht messages", "dns query latency"):
        assert wanted in titles


@pytest.mark.parametrize("title, expr", queries())
def test_every_query_uses_exported_metrics(title: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{title}: no metric in {expr!r}"
    unknown = names - exported_series()
    assert not unknown, f"{title}: {sorted(unknown)} are not exported by spegel_prometheus"


def test_every_exported_family_is_in_the_reference_table() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for name in EXPORTED:
        assert re.search(rf"^\| `{name}` \|", text, re.M), f"docs/metrics.md lacks {name}"
