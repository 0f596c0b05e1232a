"""Real ``spegel registry`` processes on free loopback addresses, for tests and benchmarks.

Both are public core API (:mod:`spegel_core.node_process`,
:mod:`spegel_core.localcluster.loopback`); the test kit re-exports them under
their earlier names.
"""

from __future__ import annotations

from spegel_core.localcluster.loopback import free_loopback_ip
from spegel_core.node_process import METRICS_PORT, NodeProcess

__all__ = ["METRICS_PORT", "NodeProcess", "free_loopback_ip"]
