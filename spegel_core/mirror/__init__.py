"""The FastAPI OCI mirror: app factory, /v2 routes, responses."""

from spegel_core.mirror.app import create_app

__all__ = ["create_app"]
