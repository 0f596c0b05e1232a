"""The throttled upstream link of the test kit: :mod:`spegel_core.localcluster.throttle`."""

from __future__ import annotations

from spegel_core.localcluster.throttle import CHUNK, ThrottledProxy, TokenBucket

__all__ = ["CHUNK", "ThrottledProxy", "TokenBucket"]
