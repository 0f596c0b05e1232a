"""Shared by the fuzz tests: how long loop-based fuzzers run."""

from __future__ import annotations

import os


def fuzz_scale() -> int:
    """How many times longer loop-based fuzzers run: 1 in the suite, more in ``nox -s fuzz``."""
    return max(1, int(os.environ.get("SPEGEL_FUZZ_SCALE", "1")))
