"""The mirror's ``/openapi.json``: FastAPI's schema, corrected to what the API really answers.

FastAPI documents a 422 with its own body for invalid parameters and JSON for every
success; the mirror answers 400 with an OCI error body, serves manifests under their
own media types and blobs as octet streams. This module rewrites the generated schema
once, so clients and schema-driven fuzzers (schemathesis, ``nox -s fuzz``) see the truth:
parameter patterns from the distribution spec, OCI error bodies on every error status,
and the 503 of a store that cannot answer. The push and delete routes, which only ever
answer 405 (with ``Allow: GET, HEAD``), are left out: the schema is the pull API.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from spegel_core.oci.mediatypes import MANIFEST_TYPES

__all__ = ["ALLOWED_METHODS", "install_openapi"]

#: The methods of the pull API (a 405 names them in ``Allow``).
ALLOWED_METHODS = "GET, HEAD"

_COMPONENT = "OCIErrors"
_ERROR_REF = {"$ref": f"#/components/schemas/{_COMPONENT}"}
_ERRORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["errors"],
    "properties": {"errors": {"type": "array", "items": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "detail": {}},
    }}},
    "description": "OCI distribution error body.",
}
_COMPONENT_PATTERN = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_DIGEST_PATTERN = r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}"
#: Patterns of the distribution spec (names, tags, digests).
PATTERNS = {
    "name": rf"^{_COMPONENT_PATTERN}(?:/{_COMPONENT_PATTERN})*$",
    "reference": rf"^(?:[a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}|{_DIGEST_PATTERN})$",
    "digest": rf"^(?:{_DIGEST_PATTERN})$",
}
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
#: ``ns``: a registry host (``docker.io``, ``10.0.0.1:5000``, ``[::1]:5000``) or its URL.
NS_PATTERN = (rf"^(?:https?://)?(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
              r"(?::[0-9]{1,5})?/?$")
#: ``Range``: byte ranges (one is served as asked; several get the whole blob).
RANGE_PATTERN = r"^bytes=(?:[0-9]+-[0-9]*|-[0-9]+)(?:, ?(?:[0-9]+-[0-9]*|-[0-9]+))*$"
_DESCRIPTIONS = {
    "400": "Invalid name, reference, digest, range or query (OCI error body)",
    "404": "Not here, nor on any peer (OCI error body)",
    "405": "Pull-only mirror (OCI error body)",
    "416": "Range not satisfiable (OCI error body)",
    "503": "The content store cannot answer right now (OCI error body)",
}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the corrected schema (built once, on first use)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            app.openapi_schema = correct_schema(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def correct_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the operations under ``/v2/`` and ``/readyz`` in place; returns ``schema``."""
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    for path, operations in list(paths.items()):
        for method, operation in list(operations.items()):
            if path == "/readyz":
                operation["responses"]["503"] = {
                    "description": "Not ready (same body, ready false)",
                    "content": {"application/json": {"schema": {}}}}
            elif path.startswith("/v2/"):
                if set(operation["responses"]) <= {"405", "422"}:
                    del operations[method]  # push and delete: always 405
                else:
                    _correct_v2(path, operation)
        if not operations:
            del paths[path]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components[_COMPONENT] = _ERRORS_SCHEMA
    if "HTTPValidationError" not in str(schema.get("paths")):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    return schema


def _correct_v2(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation["responses"]
    responses.pop("422", None)
    for parameter in operation.get("parameters", []):
        pattern = PATTERNS.get(parameter["name"]) if parameter["in"] == "path" else None
        if pattern is not None:
            parameter["schema"]["pattern"] = pattern
        if parameter["in"] == "header" and parameter["name"].lower() == "range":
            parameter["schema"] = {"type": "string", "pattern": RANGE_PATTERN,
                                   "description": parameter["schema"].get("description", "")}
        if parameter["in"] == "query" and parameter["name"] == "ns":
            parameter["schema"] = {"type": "string", "maxLength": 255, "pattern": NS_PATTERN,
                                   "description": parameter["schema"].get("description", "")}
    if path != "/v2/":
        responses.setdefault("400", {})
        responses.setdefault("404", {})
        responses.setdefault("503", {})
        digest_header = {"Docker-Content-Digest": {"required": True,
                                                   "schema": {"type": "string"}}}
        if "/manifests/" in path:
            responses["200"]["content"] = {media_type: {"schema": {}}
                                           for media_type in sorted(MANIFEST_TYPES)}
            responses["200"]["headers"] = digest_header
        elif "/blobs/" in path:
            binary = {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}}
            for status in ("200", "206"):
                responses.setdefault(status, {"description": "Partial content"})
                responses[status]["content"] = binary
                responses[status]["headers"] = digest_header
    for status, response in responses.items():
        if status[0] in "45":
            if not response.get("description"):
                response["description"] = _DESCRIPTIONS.get(status, "Error")
            response["content"] = {"application/json": {"schema": _ERROR_REF}}
