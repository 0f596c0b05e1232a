"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from spegel_core.mirror.deps import NodeDep

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The process is alive")
async def livez() -> dict[str, str]:
    """Answer 200 while the process runs (liveness probe)."""
    return {"status": "ok"}


@router.get("/readyz", summary="The mirror can answer from the local store")
@router.get("/healthz", summary="Same as /readyz, at the Go original's probe path")
async def readyz(node: NodeDep) -> JSONResponse:
    """Answer 200 once the node has started and its store is ready, else 503.

    The body shows the store's state and, with a router, its peer count.
    """
    status = node.store.status()
    ready = node.started and status.ready
    body: dict[str, object] = {"ready": ready, "store": status.detail or "ok"}
    if node.router is not None:
        router_status = node.router.status()
        body["router"] = {"peers": router_status.peers, "detail": router_status.detail}
    return JSONResponse(body, status_code=200 if ready else 503)
