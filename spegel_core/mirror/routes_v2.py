"""The pull-only OCI distribution API: ``/v2/``, manifests and blobs."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from spegel_core.errors import EndpointUnknown, NameInvalid, NotFound, Unsupported
from spegel_core.mirror import arriving
from spegel_core.mirror.deps import NodeDep, ServiceDep
from spegel_core.mirror.ranges import parse_range
from spegel_core.mirror.responses import (
    ZEROCOPY_EXTENSION,
    FileRangeResponse,
    RelayResponse,
    StoreStreamResponse,
)
from spegel_core.oci.digest import parse_digest
from spegel_core.oci.reference import (
    DEFAULT_REGISTRY,
    Reference,
    parse_manifest_reference,
    parse_name,
)
from spegel_core.protocols import ArrivingServed, BytesServed, MirrorRequest, Source
from spegel_core.registry_urls import registry_host
from spegel_core.server import splice
from spegel_core.state import tag_key

router = APIRouter(tags=["oci"])

MIRRORED_HEADER = "X-Spegel-Mirrored"
#: Where the bytes came from (local, peer): for people and tests, not for clients.
SOURCE_HEADER = "X-Spegel-Source"
OCTET_STREAM = "application/octet-stream"

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
    request: Request, name: str, reference: str, node: NodeDep, service: ServiceDep,
    ns: NsQuery = None, mirrored: MirroredHeader = None,
) -> Response:
    started = time.perf_counter()
    registry = _registry(ns)
    parse_name(name)
    tag, digest = parse_manifest_reference(reference)
    service.check_registry(registry)
    local_only = _is_mirrored(mirrored) or node.peers is None
    source = Source.LOCAL
    try:
        if tag is not None:
            digest = await service.resolve_tag(Reference(registry, name, tag=tag))
        assert digest is not None
        manifest = await service.local_manifest(digest)
    except NotFound:
        if local_only or (tag is not None and digest is None
                          and not service.tag_resolvable(Reference(registry, name, tag=tag))):
            raise
        assert node.peers is not None
        key = tag_key(Reference(registry, name, tag=tag)) if digest is None else digest
        try:
            manifest = await node.peers.manifest(registry, name, digest or reference, key, digest)
        except NotFound:
            _record(node, registry, "manifest", request, 0, started, Source.NONE, 404)
            raise
        source = Source.PEER
    headers = {
        "Docker-Content-Digest": manifest.digest,
        "Content-Length": str(len(manifest.data)),
        SOURCE_HEADER: source.value,
    }
    body = b"" if request.method == "HEAD" else manifest.data
    response = Response(body, media_type=manifest.media_type, headers=headers)
    _record(node, registry, "manifest", request, len(body), started, source)
    return response


@router.get("/v2/{name:path}/blobs/{digest}", operation_id="get_blob",
            **_BLOB_ROUTE)  # type: ignore[arg-type]
@router.head("/v2/{name:path}/blobs/{digest}", operation_id="head_blob",
             **_BLOB_ROUTE)  # type: ignore[arg-type]
async def get_blob(
    request: Request, name: str, digest: str, node: NodeDep, service: ServiceDep,
    ns: NsQuery = None, range: RangeHeader = None, mirrored: MirroredHeader = None,
) -> Response:
    started = time.perf_counter()
    registry = _registry(ns)
    parse_name(name)
    parse_digest(digest)
    service.check_registry(registry)
    try:
        info = await service.local_blob(digest)
    except NotFound:
        if _is_mirrored(mirrored) and node.config.core.advertise_arriving:
            answer = await _arriving_blob(request, node, registry, digest, range, started)
            if answer is not None:
                return answer
        if _is_mirrored(mirrored) or node.peers is None:
            raise
        return await _blob_from_peers(request, node, registry, name, digest, range, started)
    byte_range = parse_range(range, info.size)
    offset, count, status = 0, info.size, 200
    headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
               SOURCE_HEADER: Source.LOCAL.value}
    if byte_range is not None:
        offset, count, status = byte_range.start, byte_range.length, 206
        headers["Content-Range"] = byte_range.content_range(info.size)
    response: Response
    if info.path is not None:
        response = FileRangeResponse(info.path, offset, count, status_code=status,
                                     headers=headers, media_type=OCTET_STREAM)
    else:
        response = StoreStreamResponse(node.store.read(digest, offset, count), count,
                                       status_code=status, headers=headers,
                                       media_type=OCTET_STREAM)
    sent = 0 if request.method == "HEAD" else count
    _record(node, registry, "blob", request, sent, started, Source.LOCAL, status)
    return response


async def _arriving_blob(request: Request, node: NodeDep, registry: str, digest: str,
                         range_header: str | None, started: float) -> Response | None:
    """A peer asks for a blob this node is still downloading: serve it as it lands."""
    headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
               SOURCE_HEADER: arriving.SOURCE}

    def sent(count: int) -> None:
        if count:
            node.metrics.emit(ArrivingServed(count))

    response = await arriving.arriving_response(node.store, digest, range_header, headers, sent)
    if response is None:
        return None
    status = response.status_code
    _record(node, registry, "blob", request, 0 if request.method == "HEAD" else response.count,
            started, Source.LOCAL, status)
    return response


async def _blob_from_peers(request: Request, node: NodeDep, registry: str, name: str,
                           digest: str, range_header: str | None, started: float) -> Response:
    assert node.peers is not None
    if range_header is not None and parse_range(range_header, 2**63 - 1) is None:
        range_header = None  # several ranges: the whole blob, as RFC 9110 allows
    try:
        stream = await node.peers.blob(registry, name, digest, range_header)
    except NotFound:
        _record(node, registry, "blob", request, 0, started, Source.NONE, 404)
        raise
    headers = {"Docker-Content-Digest": digest, "Accept-Ranges": "bytes",
               SOURCE_HEADER: Source.PEER.value}
    status = 200
    if range_header is not None:
        status = 206
        headers["Content-Range"] = (
            f"bytes {stream.start}-{stream.start + stream.length - 1}/{stream.size}")
    if request.method == "HEAD":
        await stream.aclose()
    sent = 0 if request.method == "HEAD" else stream.length
    _record(node, registry, "blob", request, sent, started, Source.PEER, status)
    if (stream.relay is not None and request.method != "HEAD" and splice.AVAILABLE
            and ZEROCOPY_EXTENSION in request.scope.get("extensions", {})):
        return RelayResponse(stream.relay, stream.length,
                             source_timeout=node.peers.settings.request_timeout,
                             status_code=status, headers=headers, media_type=OCTET_STREAM)
    return StoreStreamResponse(stream.chunks, stream.length, status_code=status,
                               headers=headers, media_type=OCTET_STREAM)


async def push_unsupported(rest: str) -> Response:
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
    raise EndpointUnknown("no such endpoint in the pull API")


def _is_mirrored(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def _record(node: NodeDep, registry: str, kind: str, request: Request, sent: int,
            started: float, source: Source, status: int = 200) -> None:
    node.metrics.emit(MirrorRequest(
        registry=registry, kind=kind, source=source, status=status, bytes=sent,
        duration_s=time.perf_counter() - started, method=request.method,
        path=request.url.path,
    ))
    if sent:
        node.metrics.emit(BytesServed(source, sent))
