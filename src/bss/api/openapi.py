"""The OpenAPI description served at /openapi.json (and rendered at /docs and /redoc).

Parameters and bodies are generated from the views' declared parameters and pydantic
models (bss.api.params), the answers' schemas from bss.api.answers. This module adds what
those cannot say: the token scheme (header
or cookie), the documented envelope around each operation's payload, the error responses
(400 SYNTAX instead of FastAPI's 422), and the schemas of bodies that a service reads and
checks itself (bss.api.params.body_of).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from bss.api.answers import answer_schemas
from bss.api.deps import TOKEN_COOKIE
from bss.api.params import BODY_MODELS, CHECKED_BY_VIEW

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _list_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _one_or_list(name: str) -> dict[str, Any]:
    return {"oneOf": [_ref(name), _list_of(name)]}


#: (method, path) -> the payload keys of the success envelope (at most one of them is present).
PAYLOADS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/auth"): {"token": {"type": "string"}},
    ("get", "/auth"): {"user": _ref("User")},
    ("get", "/member"): {"member": _ref("Member"), "members": _list_of("Member")},
    ("post", "/member"): {"member": _ref("Member")},
    ("put", "/member"): {"member": _ref("Member")},
    ("get", "/user"): {"user": _ref("User"), "users": _list_of("User")},
    ("post", "/user"): {"user": _ref("User")},
    ("put", "/user"): {"user": _ref("User")},
    ("get", "/segment"): {"segment": _ref("Segment"), "segments": _list_of("Segment")},
    ("post", "/segment"): {"segment": _ref("Segment"), "segments": _list_of("Segment")},
    ("put", "/segment"): {"segment": _ref("Segment")},
    **{
        (method, "/batch-segment-config"): {
            "batch_segment_upload_config": _ref("BatchSegmentUploadConfig")
        }
        for method in ("get", "post", "put")
    },
    # A data-provider login gets the job as a one-element array (as documented).
    ("post", "/batch-segment"): {"batch_segment_upload_job": _one_or_list("BatchSegmentUploadJob")},
    ("get", "/batch-segment"): {"batch_segment_upload_job": _one_or_list("BatchSegmentUploadJob")},
    ("post", "/segment-upload/{job_id}"): {
        "batch_segment_upload_job": _one_or_list("BatchSegmentUploadJob")
    },
    ("get", "/batch-segment/meta"): {"fields": {"type": "array", "items": {"type": "object"}}},
    ("get", "/user-segments"): {"segments": _list_of("UserSegment")},
}

#: Operations anyone may call without a token.
PUBLIC = {("post", "/auth"), ("get", "/health"), ("get", "/metrics")}
#: The upload URL is a capability: a token is optional, but one that is sent must be valid.
TOKEN_OPTIONAL = {("post", "/segment-upload/{job_id}")}

_ERRORS = {
    "400": "SYNTAX: a missing or malformed parameter or body",
    "401": "NOAUTH: no token, or an expired or invalid one (log in again)",
    "403": "UNAUTH: the caller may not do this",
    "404": "NOTFOUND",
    "429": "Throttled (RATE_EXCEEDED, with Retry-After) or an upload limit (RATE_LIMIT_EXCEEDED)",
}
_UPLOAD_ERRORS = {
    "408": "Maximum upload time exceeded",
    "409": "The upload URL was already used",
    "410": "The upload URL expired",
    "413": "FILESIZE_LIMIT_EXCEEDED (extra fields max_file_bytes and file_bytes)",
    "415": "Wrong Content-Type (send application/octet-stream)",
}


def _envelope(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["response"],
        "properties": {
            "response": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"const": "OK"},
                    "dbg_info": {"type": "object"},
                    "count": {"type": "integer"},
                    "start_element": {"type": "integer"},
                    "num_elements": {"type": "integer"},
                    **payload,
                },
            }
        },
    }


def _describe_operation(
    method: str, path: str, operation: dict[str, Any], regions: list[str]
) -> None:
    key = (method, path)
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if schema.pop(CHECKED_BY_VIEW, False):
            parameter["required"] = True
        if parameter["name"] == "region" and parameter["in"] == "query":
            schema["enum"] = [*regions, ""]  # another region is a 400
    if key in PUBLIC:
        operation["security"] = []
    elif key in TOKEN_OPTIONAL:
        operation["security"] = [{}, {"token_header": []}, {"token_cookie": []}]
    responses = operation.setdefault("responses", {})
    success = responses.setdefault("200", {"description": "OK"})
    content = success.setdefault("content", {})
    if "application/json" in content:
        content["application/json"] = {"schema": _envelope(PAYLOADS.get(key, {}))}
    errors = dict(_ERRORS)
    if key in TOKEN_OPTIONAL:
        errors.update(_UPLOAD_ERRORS)
    for status, description in errors.items():
        responses[status] = {
            "description": description,
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    responses.pop("422", None)  # validation errors are answered as 400 SYNTAX


def install(app: FastAPI) -> None:
    """Make app.openapi() return the described schema (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema["openapi"] = "3.1.0"
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(answer_schemas(_REF + "{model}"))
            for name, model in BODY_MODELS.items():
                body = model.model_json_schema(ref_template=_REF + "{model}")
                components["schemas"].update(body.pop("$defs", {}))
                components["schemas"][name] = body
            for name in ("HTTPValidationError", "ValidationError"):
                components["schemas"].pop(name, None)
            components["securitySchemes"] = {
                "token_header": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "The token from POST /auth, as is (no scheme word needed)",
                },
                "token_cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": TOKEN_COOKIE,
                    "description": "Set by POST /auth (curl -b cookies -c cookies)",
                },
            }
            schema["security"] = [{"token_header": []}, {"token_cookie": []}]
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    _describe_operation(method, path, operation, list(app.state.stores.regions))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
