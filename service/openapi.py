"""The OpenAPI document, with every error response declared as what the API sends: `ProblemDetails` under
`application/problem+json`.

FastAPI writes its automatic 422 as `application/json` (HTTPValidationError), and a route's own `responses` do not
say what the caller check, Redis and the middleware answer for it. So the generated document is completed here,
once: every 4xx/5xx references `ProblemDetails`; every operation under /v1 (all take the caller check and Redis)
and /metrics (the key check) may answer 401, 429 and 503, /readyz 503, and one with a request body 400, 413, 415
and 422.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

from service.problems import PROBLEM_JSON, ProblemDetails

REF = {"$ref": "#/components/schemas/ProblemDetails"}
RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}

# What each error means wherever it is declared without a word of its own.
MEANING = {
    400: "Malformed JSON (`malformed-json`)",
    401: "No or wrong bearer key (`unauthorized`); only when `GLIMPSE_API_KEYS` is set",
    413: "Body too large (`body-too-large`, with `limit_bytes`)",
    415: "The body is not sent as JSON (`unsupported-media-type`): send `Content-Type: application/json`",
    422: "Invalid request (`invalid-request`, or a kind naming the problem)",
    429: "Too many requests for this key (`rate-limited`) or failed logins from this address "
         "(`too-many-failed-logins`); only with `GLIMPSE_API_KEYS`; `Retry-After` says when to retry",
    503: "The job store (Redis) cannot be reached (`storage-unavailable`); retry shortly",
}
UNAVAILABLE_TO_CREATE = ("The job store (Redis) cannot be reached (`storage-unavailable`) or is full "
                         "(`storage-full`), no worker runs (`no-worker`) or the queue is full (`queue-full`); "
                         "`Retry-After` says when to retry")
NOT_READY = "Not ready (`not-ready`): Redis does not answer or no worker sends heartbeats"
# Header objects per status: the ones we always send are required, so the document promises no more than that.
HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer realm=\"glimpse\"`", "required": True,
                               "schema": {"type": "string"}}},
    429: {"Retry-After": {**RETRY_AFTER, "required": True}},
    503: {"Retry-After": RETRY_AFTER},
}
# Errors answered before or around the route, by path prefix: the key check (401, 429) and Redis (503).
BY_PATH: dict[str, tuple[int, ...]] = {"/v1/": (401, 429, 503), "/metrics": (401, 429, 503), "/readyz": (503,)}
BODY_ERRORS = (400, 413, 415, 422)  # JSON parsing, the body limit, the Content-Type check, validation
FASTAPI_422 = ("HTTPValidationError", "ValidationError")  # the schemas of FastAPI's own 422, unused once replaced


def install(app: FastAPI) -> None:
    """Make `app.openapi()` (and /openapi.json) serve the completed document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        spec = generate()  # FastAPI's cached document (rebuilt when routes are added), completed in place
        done = "ProblemDetails" in spec.get("components", {}).get("schemas", {})
        return spec if done else declare_problems(spec)

    app.openapi = openapi  # type: ignore[method-assign]


def _statuses(path: str, operation: dict[str, Any]) -> set[int]:
    """The errors this operation can answer besides those its route declares."""
    out = {s for prefix, statuses in BY_PATH.items() if (path + "/").startswith(prefix) for s in statuses}
    if "requestBody" in operation:
        out.update(BODY_ERRORS)
    return out


def _generic(description: str | None, status: int) -> bool:
    return description in (None, "", "Validation Error", "problem details (RFC 9457)", HTTPStatus(status).phrase)


def _meaning(status: int, path: str, operation: dict[str, Any]) -> str:
    if status == 503 and path == "/readyz":
        return NOT_READY
    if status == 503 and "requestBody" in operation:  # the POSTs that create jobs
        return UNAVAILABLE_TO_CREATE
    return MEANING.get(status, HTTPStatus(status).phrase)


def declare_problems(spec: dict[str, Any]) -> dict[str, Any]:
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status in _statuses(path, operation):
                responses.setdefault(str(status), {})
            for code, response in responses.items():
                if not code.isdigit() or int(code) < 400:
                    continue
                status = int(code)
                if _generic(response.get("description"), status):
                    response["description"] = _meaning(status, path, operation)
                response["content"] = {PROBLEM_JSON: {"schema": REF}}
                if status in HEADERS:
                    response["headers"] = {**HEADERS[status], **response.get("headers", {})}
            operation["responses"] = dict(sorted(responses.items()))
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["ProblemDetails"] = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in FASTAPI_422:  # HTTPValidationError first: it is what references ValidationError
        others = {k: v for k, v in schemas.items() if k != name}
        if f'"#/components/schemas/{name}"' not in json.dumps([spec.get("paths"), others]):
            schemas.pop(name, None)
    return spec
