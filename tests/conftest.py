"""Hypothesis profiles of the suite.

``default`` keeps the suite quick; ``fuzz`` (``HYPOTHESIS_PROFILE=fuzz``, set by
``nox -s fuzz``) runs every property test that does not fix its own example count
thousands of times. Loop-based fuzzers scale with ``SPEGEL_FUZZ_SCALE``
(:func:`tests.fuzzing.fuzz_scale`).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("fuzz", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

