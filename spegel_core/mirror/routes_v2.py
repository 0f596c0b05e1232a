"""The pull-only OCI distribution API: ``/v2/``, manifests and blobs.

The routes parse and check what a request names, then hand it to
:class:`~spegel_core.mirror.pulls.PullService`, which finds the content, chooses
how it is sent and accounts for the answer.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from spegel_core.errors import (
    BlobUnknown,
    EndpointUnknown,
    ManifestUnknown,
    NameInvalid,
    Unsupported,
)
from spegel_core.mirror.deps import PullDep
from spegel_core.mirror.peers import WAIT_HEADER
from spegel_core.mirror.pulls import Pull
from spegel_core.mirror.responses import ZEROCOPY_EXTENSION
from spegel_core.oci.digest import parse_digest
from spegel_core.oci.reference import DEFAULT_REGISTRY, parse_manifest_reference, parse_name
from spegel_core.registry_urls import registry_host
from spegel_core.server import splice

router = APIRouter(tags=["oci"])

MIRRORED_HEADER = "X-Spegel-Mirrored"

NsQuery = Annotated[
    str | None,
    Query(max_length=300, description="Registry the content comes from (default docker.io)."),
]
RangeHeader = Annotated[str | None, Header(description="A single byte range: bytes=START-END")]
MirroredHeader = Annotated[
    str | None,
    Header(alias=MIRRORED_HEADER, description="Set by peers: answer from local content only."),
]


def _registry(ns: str | None) -> str:
    if ns is None or ns == "":
        return DEFAULT_REGISTRY
    try:
        return registry_host(ns)
    except ValueError:
        raise NameInvalid(f"invalid ns {ns[:80]!r}") from None


@router.get("/v2/", summary="API version check", operation_id="v2_root")
@router.head("/v2/", summary="API version check", operation_id="v2_root_head")
async def v2_root() -> JSONResponse:
    """Answer the API version check with ``Docker-Distribution-API-Version: registry/2.0``."""
    return JSONResponse({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})


_MANIFEST_ROUTE = {
    "summary": "Fetch a manifest by tag or digest",
    "responses": {404: {"description": "MANIFEST_UNKNOWN"}, 400: {"description": "invalid input"}},
}
_BLOB_ROUTE = {
    "summary": "Fetch a blob, optionally one byte range",
    "responses": {
        206: {"description": "Partial content"},
        404: {"description": "BLOB_UNKNOWN"},
        416: {"description": "Range not satisfiable"},
    },
}


@router.get("/v2/{name:path}/manifests/{reference}", operation_id="get_manifest",
            **_MANIFEST_ROUTE)  # type: ignore[arg-type]
@router.head("/v2/{name:path}/manifests/{reference}", operation_id="head_manifest",
             **_MANIFEST_ROUTE)  # type: ignore[arg-type]
async def get_manifest(
    request: Request, name: str, reference: str, pulls: PullDep,
    ns: NsQuery = None, mirrored: MirroredHeader = None,
) -> Response:
    """Serve a manifest from the local store, else from a peer that has it.

    A request from a peer (the mirrored header set) is answered from local content only.
    """
    pull = _pull(request, ns, name, mirrored)
    tag, digest = parse_manifest_reference(reference)
    return await pulls.manifest(pull, tag, digest)


@router.get("/v2/{name:path}/blobs/{digest}", operation_id="get_blob",
            **_BLOB_ROUTE)  # type: ignore[arg-type]
@router.head("/v2/{name:path}/blobs/{digest}", operation_id="head_blob",
             **_BLOB_ROUTE)  # type: ignore[arg-type]
async def get_blob(
    request: Request, name: str, digest: str, pulls: PullDep,
    ns: NsQuery = None, range: RangeHeader = None, mirrored: MirroredHeader = None,
) -> Response:
    """Serve a blob, or one byte range of it, from the local store, else from a peer.

    A request from a peer (the mirrored header set) is answered from local content only.
    """
    pull = _pull(request, ns, name, mirrored)
    return await pulls.blob(pull, parse_digest(digest), range)


def _pull(request: Request, ns: str | None, name: str, mirrored: str | None) -> Pull:
    """The request as the service sees it (the clock starts here)."""
    started = time.perf_counter()
    local_only = _is_mirrored(mirrored)
    return Pull(registry=_registry(ns), name=parse_name(name), method=request.method,
                path=request.url.path, started=started, local_only=local_only,
                zerocopy=(splice.AVAILABLE
                          and ZEROCOPY_EXTENSION in request.scope.get("extensions", {})),
                client=request.client.host if request.client is not None else "",
                wait=_wait(request.headers.get(WAIT_HEADER)) if local_only else 0.0)


def _wait(value: str | None) -> float:
    """Seconds of ``X-Spegel-Wait`` (0 when absent or not a number; at most 30)."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return min(30.0, seconds) if seconds > 0 else 0.0


async def push_unsupported(rest: str) -> Response:
    """Refuse pushes and deletes with 405 ``UNSUPPORTED``: the mirror is pull-only."""
    raise Unsupported("this mirror is pull-only")


for _method in ("POST", "PUT", "PATCH", "DELETE"):
    router.add_api_route(
        "/v2/{rest:path}", push_unsupported, methods=[_method], status_code=405,
        summary="Push and delete are not supported (pull-only mirror)",
        responses={405: {"description": "UNSUPPORTED"}},
        operation_id=f"push_unsupported_{_method.lower()}",
    )


@router.api_route("/v2/{rest:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def unknown_endpoint(rest: str) -> Response:
    """Answer paths under ``/v2/`` that no route serves with the spec's error codes."""
    # A blob or manifest path whose reference did not route (empty, or with a "/").
    if "/blobs/" in f"/{rest}":
        raise BlobUnknown("no such blob")
    if "/manifests/" in f"/{rest}":
        raise ManifestUnknown("no such manifest")
    if rest.endswith("/tags/list") or "/referrers/" in f"/{rest}":
        raise EndpointUnknown("this mirror serves neither tag lists nor referrers")
    raise EndpointUnknown("no such endpoint in the pull API")


def _is_mirrored(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"
