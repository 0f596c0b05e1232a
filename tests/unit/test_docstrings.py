"""One docstring style: reST field lists, as in ``spegel_core/hookspecs.py``.

ruff's pydocstyle rules (``D``, pyproject.toml) require docstrings on the public API
but cannot refuse the other style, so this test does: no Google section header
(``Args:``, ``Returns:``, ...) on a line of its own in any docstring of
``spegel_core/`` or ``plugins/``. Use ``:param x:``, ``:returns:``, ``:raises E:``,
and ``#:`` comments or prose for attributes.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("spegel_core", "plugins")
#: A Google-style section header: the word and a colon alone on a line.
GOOGLE_SECTION = re.compile(
    r"^[ \t]*(Args|Arguments|Returns|Raises|Yields|Attributes):[ \t]*$", re.M)


def pending_docstrings() -> list[str]:
    """Paths still waiting for docstrings, read from the one place that lists them.

    That is pyproject.toml's ``[tool.ruff.lint.per-file-ignores]``: every pattern
    under ``spegel_core/`` or ``plugins/`` that ignores ``D`` ("docstrings pending:
    files being changed on other branches"), except the generated ``_pb`` modules.
    Removing an entry there brings its files under ruff's D rules and this test.
    """
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignores: dict[str, list[str]] = config["tool"]["ruff"]["lint"]["per-file-ignores"]
    return sorted(pattern for pattern, rules in ignores.items()
                  if "D" in rules and pattern.startswith(tuple(f"{p}/" for p in PACKAGES))
                  and "/_pb/" not in pattern)


def google_sections(source: str) -> list[tuple[int, str]]:
    """(line, header) of each Google section header in the docstrings of ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef):
            continue
        if not (node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
                and isinstance(node.body[0].value.value, str)):
            continue
        docstring = node.body[0].value
        for match in GOOGLE_SECTION.finditer(docstring.value):
            line = docstring.lineno + docstring.value.count("\n", 0, match.start())
            found.append((line, match.group(1)))
    return found


def checked_files() -> list[Path]:
    """The Python files of the packages, without generated and pending ones."""
    pending = pending_docstrings()
    files = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/_pb/" in relative or any(fnmatch.fnmatch(relative, p) for p in pending):
                continue
            files.append(path)
    return files


def test_no_google_sections_in_docstrings() -> None:
    files = checked_files()
    assert len(files) > 50, "the scan found too few files: is ROOT right?"
    offenders = [f"{path.relative_to(ROOT)}:{line}: {header}:"
                 for path in files for line, header in google_sections(path.read_text())]
    assert not offenders, ("Google sections in docstrings; use reST fields (:param x:, "
                           ":returns:, :raises E:) as spegel_core/hookspecs.py does:\n"
                           + "\n".join(offenders))


def test_pending_entries_name_existing_files() -> None:
    # A stale entry (a file renamed or moved) would silently exempt nothing or the wrong file.
    for pattern in pending_docstrings():
        matches = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                   if fnmatch.fnmatch(path.relative_to(ROOT).as_posix(), pattern)]
        assert matches, f"per-file-ignores entry {pattern!r} matches no file"


@pytest.mark.parametrize(("docstring", "expected"), [
    ('"""Do it.\n\n    Args:\n        x: a value.\n    """', ["Args"]),
    ('"""Do it.\n\n    Returns:\n        The value.\n\n    Raises:\n        E: no.\n    """',
     ["Returns", "Raises"]),
    ('"""Do it.\n\n    :param x: a value.\n    :returns: the value.\n    """', []),
    ('"""The call returns: the value, as Args: says."""', []),
])
def test_the_check_finds_google_headers_only(docstring: str, expected: list[str]) -> None:
    source = f"def f(x):\n    {docstring}\n"
    assert [header for _, header in google_sections(source)] == expected


def test_the_check_reports_the_line() -> None:
    source = 'class C:\n    """Doc.\n\n    Attributes:\n        x: a value.\n    """\n'
    assert google_sections(source) == [(4, "Attributes")]
