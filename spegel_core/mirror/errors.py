"""One place that maps errors to OCI error bodies."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from spegel_core.errors import OCIError, PeerError, RangeNotSatisfiable
from spegel_core.mirror.openapi import ALLOWED_METHODS

log = logging.getLogger(__name__)


def oci_error_response(status: int, code: str, message: str,
                       headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON response with an OCI error body: ``{"errors": [{"code", "message", "detail"}]}``."""
    body = {"errors": [{"code": code, "message": message, "detail": None}]}
    return JSONResponse(body, status_code=status, headers=headers)


async def _oci_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, OCIError):  # registered for that type only
        return await _unexpected(request, exc)
    headers = None
    if isinstance(exc, RangeNotSatisfiable):
        headers = {"Content-Range": f"bytes */{exc.size}"}
    elif exc.status == 405:
        headers = {"Allow": ALLOWED_METHODS}  # RFC 9110: a 405 names what is allowed
    return oci_error_response(exc.status, exc.code, exc.message, headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # registered for that type only
        return await _unexpected(request, exc)
    # Paths outside /v2/: no spec code means "no such path", so the one for an
    # operation the server does not implement.
    code = {404: "UNSUPPORTED", 405: "UNSUPPORTED"}.get(exc.status_code, "UNKNOWN")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # every route allows GET and HEAD (Starlette names one)
        headers["Allow"] = ALLOWED_METHODS
    return oci_error_response(exc.status_code, code, str(exc.detail), headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # registered for that type only
        return await _unexpected(request, exc)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return oci_error_response(400, "INVALID_REQUEST", f"{where}: {first.get('msg', 'invalid')}")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, PeerError):
        # A peer's bytes failed verification after the response started: it is cut off
        # on purpose (the client retries), so one line, not a traceback.
        log.warning("cut off %s %s: %s", request.method, request.url.path, exc)
        return oci_error_response(502, "UNKNOWN", "a peer failed while streaming")
    log.exception("unexpected error serving %s %s", request.method, request.url.path)
    return oci_error_response(500, "UNKNOWN", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception the app can raise to an OCI error body.

    Domain errors get their own status and code, Starlette's 404/405 and validation
    errors become ``UNSUPPORTED`` and ``INVALID_REQUEST``, a peer failure mid-stream
    a 502 logged on one line, anything else a logged 500 ``UNKNOWN``.
    """
    app.add_exception_handler(OCIError, _oci_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
