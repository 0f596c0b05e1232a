"""The FastAPI OCI mirror: app factory (``spegel_core.mirror.app``), /v2 routes, responses."""
