"""Hooks, docs and tests stay in step (every hook documented and exercised)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spegel_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("spegel_"))


def test_there_are_hooks() -> None:
    assert {"spegel_add_settings", "spegel_make_content_store", "spegel_make_router",
            "spegel_register_discovery", "spegel_register_metrics",
            "spegel_add_routes"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docs_section(hook: str) -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^### {hook}$", text, re.M), f"docs/plugins.md lacks a section for {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docstring_in_the_pytest_shape(hook: str) -> None:
    doc = getattr(hookspecs, hook).__doc__ or ""
    assert "Called" in doc
    assert "All implementations are called" in doc or "Stops at first non-None result" in doc


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook: str) -> None:
    tests = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_meta.py"]
    assert any(hook in p.read_text() for p in tests), f"no test mentions {hook}"
