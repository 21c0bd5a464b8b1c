"""The OpenAPI document says what the API really answers: the app's own 422 body
(``{"detail": [{"field", "reason"}]}``, not FastAPI's default), and the errors every route can
give because of the shell (401 for an unknown token on any route, 413 for a body over the limit,
429 while an address is locked out or a key is over its rate). Checked by schemathesis
(``tests/integration/test_api_fuzz.py``, ``benchmarks/fuzz_api.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class FieldError(BaseModel):
    field: str = Field(description="where: a body field (`urls`, `hashes[3].value`), `body`, or a parameter name")
    reason: str = Field(description="why, in words a caller can act on")


class ValidationErrorBody(BaseModel):
    """Every 422 (and the 413 of an oversized body)."""

    detail: list[FieldError]


class ErrorBody(BaseModel):
    """Every other error: a sentence (or the field list of the validation errors)."""

    detail: str | list[FieldError]


def _ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}

_COMMON: dict[str, dict[str, Any]] = {
    "401": {"description": "unknown, revoked or missing token (an unknown token is refused on "
                           "every route, public ones too)", "content": _ref("ErrorBody")},
    "403": {"description": "the token's role may not call this (or not on this resource)",
            "content": _ref("ErrorBody")},
    "429": {"description": "too many unknown tokens from this address (lockout), or over a "
                           "per-key rate limit or budget", "headers": _RETRY_AFTER,
            "content": _ref("ErrorBody")},
}


def _with_errors(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (FieldError, ValidationErrorBody, ErrorBody):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for code, response in _COMMON.items():
                responses.setdefault(code, response)
            responses["422"] = {"description": "invalid input: each problem with its field and reason",
                                "content": _ref("ValidationErrorBody")}
            if "requestBody" in operation:
                responses.setdefault("413", {"description": "request body over the size limit",
                                             "content": _ref("ValidationErrorBody")})
                responses.setdefault("400", {"description": "a body that cannot be parsed",
                                             "content": _ref("ErrorBody")})
            if "{" in path:
                responses.setdefault("404", {"description": "no such resource",
                                             "content": _ref("ErrorBody")})
            for response in responses.values():
                content = response.get("content", {})
                for media in content.values():
                    ref = media.get("schema", {}).get("$ref", "")
                    if ref.endswith("/HTTPValidationError"):
                        media["schema"] = {"$ref": "#/components/schemas/ValidationErrorBody"}
    return schema


def document_errors(app: FastAPI) -> None:
    """Replace ``app.openapi`` by one that documents the shell's errors (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_errors(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes,
            ))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
