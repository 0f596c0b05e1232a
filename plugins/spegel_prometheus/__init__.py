"""Prometheus metrics (``/metrics``) and a debug page (``/debug``) on ``--metrics-addr``."""

from spegel_prometheus.metrics import EXPORTED, PrometheusSink

__all__ = ["EXPORTED", "PrometheusSink"]
