"""Hooks, docs and tests stay in step (every hook documented, with its signature, and called)."""

from __future__ import annotations

import ast
import functools
import inspect
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


def _section(hook: str) -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    match = re.search(rf"^### {hook}$\n(.*?)(?=^#{{2,3}} |\Z)", text, re.M | re.S)
    assert match, f"docs/plugins.md lacks a section for {hook}"
    return match.group(1)


def _documented_signature(hook: str) -> str:
    spec = inspect.signature(getattr(hookspecs, hook))
    text = f"{hook}({', '.join(spec.parameters)})"
    returns = spec.return_annotation
    return text if returns in ("None", None, inspect.Signature.empty) else f"{text} -> {returns}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_signature_is_documented(hook: str) -> None:
    """As datasette's docs test: the section opens with the exact signature."""
    expected = _documented_signature(hook)
    first = re.search(r"`([^`]+)`", _section(hook))
    assert first and first.group(1) == expected, (
        f"docs/plugins.md section {hook} should start with `{expected}`, "
        f"found `{first.group(1) if first else ''}`")


def _facade_methods() -> dict[str, str]:
    """Hook name -> the PluginManager method that calls it."""
    tree = ast.parse((ROOT / "spegel_core" / "plugin_manager.py").read_text())
    found: dict[str, str] = {}
    for method in ast.walk(tree):
        if isinstance(method, ast.FunctionDef):
            for call in ast.walk(method):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr in HOOKS):
                    found[call.func.attr] = method.name
    return found


@functools.cache
def _test_modules() -> tuple[ast.Module, ...]:
    return tuple(ast.parse(p.read_text()) for p in sorted((ROOT / "tests").rglob("test_*.py"))
                 if p.name != "test_meta.py")


def _calls(tree: ast.AST, hook: str, facade: str | None) -> list[str]:
    """How a test module makes ``hook`` run (comments and docstrings never count)."""
    how = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == hook:
            if any("hookimpl" in ast.unparse(d) for d in node.decorator_list):
                how.append("implements it")  # registered in a test, called by the manager
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == hook:
                how.append("calls pm.hook")
            elif facade is not None and node.func.attr == facade:
                how.append(f"calls PluginManager.{facade}")
        elif (isinstance(node, ast.Compare) and "hook_recorder" in ast.unparse(node)
              and any(isinstance(c, ast.Constant) and c.value == hook for c in ast.walk(node))):
            how.append("asserts a recorded call")
    return how


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_called_by_a_test(hook: str) -> None:
    facade = _facade_methods().get(hook)
    assert facade is not None, f"PluginManager has no typed method calling {hook}"
    how = [way for tree in _test_modules() for way in _calls(tree, hook, facade)]
    assert how, f"no test implements, calls or records a call of {hook}"


def test_a_mention_in_a_comment_does_not_count() -> None:
    source = '# spegel_configure\n"""spegel_configure"""\nx = "spegel_configure"\n'
    assert _calls(ast.parse(source), "spegel_configure", "configure") == []
    assert _calls(ast.parse("pm.configure(config)"), "spegel_configure", "configure")
