"""RFC 9457 problem details (`application/problem+json`) for every error the API returns.

Routes raise `Problem` (an HTTPException with a type, title and extension members); FastAPI's own errors
(validation, malformed JSON, a body that is not JSON, 404/405 of the router) are mapped here too. Only a genuine bug
reaches the catch-all (service/catchall.py), which logs it and answers `bug()`; Redis being unreachable is a 503.
`ProblemDetails` is the body's schema, which the OpenAPI document (service/openapi.py) gives every error response.
"""

from __future__ import annotations

import email.message
import logging
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

log = logging.getLogger("service")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://glimpse.dev/problems/"  # stable identifiers; documented in the OpenAPI descriptions


def _absent_not_null(schema: dict[str, Any]) -> None:
    """A member we leave out rather than send as null: its schema is a plain string, without `default: null`."""
    schema.pop("default", None)


class ProblemDetails(BaseModel):
    """An error (RFC 9457). `type` ends in the problem's kind (`…/problems/unknown-words`); kinds add members of
    their own beside these (`unknown_words`, `limit_bytes`, `errors`, …)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{
        "type": TYPE_BASE + "unknown-words", "title": "Unknown words", "status": 422,
        "detail": "words the model does not know: 'purple' (caption 0, position 1)", "instance": "/v1/generations",
        "unknown_words": [{"caption": 0, "word": "purple", "position": 1, "start": 4, "end": 10}]}]})

    type: str = Field(description=f"`{TYPE_BASE}<kind>`, or `about:blank` for a bare HTTP status")
    title: str = Field(description="short summary of the kind")
    status: int = Field(ge=400, le=599, description="the HTTP status, repeated")
    detail: str | SkipJsonSchema[None] = Field(None, description="what went wrong with this request",
                                               json_schema_extra=_absent_not_null)
    instance: str | SkipJsonSchema[None] = Field(None, description="the request's path",
                                                 json_schema_extra=_absent_not_null)


class Problem(StarletteHTTPException):
    def __init__(self, status: int, kind: str | None = None, detail: str | None = None, *,
                 title: str | None = None, headers: dict[str, str] | None = None, **extensions: Any):
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.kind = kind
        self.title = title
        self.extensions = extensions


def problem_response(request: Request, status: int, *, kind: str | None = None, title: str | None = None,
                     detail: str | None = None, headers: dict[str, str] | None = None, **ext: Any) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind if kind else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    body.update(ext)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette's 405 names only the first matching route's), and
    HEAD with GET (service/head.py)."""
    routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]  # a mount takes any method
    allowed = {m for m in METHODS if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)}
    if "GET" in allowed:
        allowed.add("HEAD")
    return [m for m in METHODS if m in allowed]


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if isinstance(exc, Problem):
        return problem_response(request, exc.status_code, kind=exc.kind, title=exc.title, detail=exc.detail,
                                headers=headers, **exc.extensions)
    allowed = allowed_methods(request) if exc.status_code == 405 else []
    if allowed:
        headers["Allow"] = ", ".join(allowed)
    elif "Allow" in headers:  # a mount's own 405 (the static files) names its methods itself
        allowed = [m.strip() for m in headers["Allow"].split(",")]
    if exc.status_code == 400 and exc.detail == FASTAPI_UNPARSED and exc.__cause__ is not None:
        return problem_response(request, 400, kind="malformed-json", title="Malformed JSON",
                                detail=f"the body is not valid JSON: {_unparsed(exc.__cause__)}")
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != HTTPStatus(exc.status_code).phrase else None
    if detail is None and exc.status_code == 404:  # the router's own: no route at this path
        detail = f"nothing at {request.url.path!r}: GET /openapi.json (or /docs) lists the API's paths"
    elif detail is None and exc.status_code == 405:
        detail = f"{request.method} is not allowed at {request.url.path!r}; it takes {', '.join(allowed) or 'none'}"
    return problem_response(request, exc.status_code, detail=detail or HTTPStatus(exc.status_code).description,
                            headers=headers)


FASTAPI_UNPARSED = "There was an error parsing the body"  # FastAPI's 400 when json.loads raised, not of syntax


def _unparsed(cause: BaseException) -> str:
    """Why json.loads refused a body in a way FastAPI does not report (it reports only syntax errors itself)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"it is not UTF-8 text (byte 0x{cause.object[cause.start]:02x} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "its arrays or objects nest too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number in it has too many digits"
    return f"it could not be parsed ({type(cause).__name__})"


def json_media_type(content_type: str | None) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON (application/json, application/*+json)."""
    if not content_type:
        return False  # FastAPI's strict_content_type: no header, no JSON
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    content_type = request.headers.get("content-type")
    if any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors) and not json_media_type(content_type):
        # FastAPI never parsed the body, so its errors would be about bytes, not fields: name the real cause.
        got = f"`Content-Type: {content_type}`" if content_type else "no Content-Type"
        return problem_response(request, 415, kind="unsupported-media-type", title="Unsupported Media Type",
                                detail=f"the body must be JSON; the request had {got}: send "
                                       "`Content-Type: application/json`")
    if any(e.get("type") == "json_invalid" for e in errors):
        e = errors[0]
        where = e.get("loc", ("body", 0))[-1]
        msg = (e.get("ctx") or {}).get("error", "JSON decode error")
        return problem_response(request, 400, kind="malformed-json", title="Malformed JSON",
                                detail=f"the body is not valid JSON: {msg} at character {where}")
    clean = [{"loc": list(e.get("loc", ())), "msg": _message(e), "type": e.get("type", "")} for e in errors]
    return problem_response(request, 422, kind="invalid-request", title="Invalid request",
                            detail=_joined(errors, skip=1, default="body"), errors=clean)


def _message(error: Any) -> str:
    """One pydantic error's message without the "Value error, " our own validators' messages get."""
    return str(error.get("msg", "")).removeprefix("Value error, ")


def _joined(errors: Any, *, skip: int = 0, default: str = "") -> str:
    """'where: message; …' for pydantic errors, `where` their location past its first `skip` parts (FastAPI's start
    with "body", "query" or "path"), else `default`; a message alone where there is neither."""
    parts = []
    for e in errors:
        where = _where(tuple(e.get("loc", ()))[skip:]) or default
        parts.append(f"{where}: {_message(e)}" if where else _message(e))
    return "; ".join(parts)


def _where(loc: tuple[Any, ...]) -> str:
    """A pydantic location as the problems our own checks write: ("support", 0, "images", 2) -> support[0].images[2]."""
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return where


def validation_detail(exc: ValidationError) -> str:
    """A job model's own ValidationError as a problem's detail: each error's message where it applies, without
    pydantic's banner, input echo and links (str(exc) carries all three)."""
    return _joined(exc.errors())


def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(request, 503, kind="storage-unavailable", title="Job store unavailable",
                            detail="the job store (Redis) cannot be reached; retry shortly",
                            headers={"Retry-After": "5"})


def bug(request: Request) -> JSONResponse:
    """The answer to a genuine bug (already logged by the catch-all)."""
    return problem_response(request, 500, detail="internal error; it has been logged")


def _redis_full(request: Request, exc: Exception) -> JSONResponse:
    # A write refused at maxmemory (noeviction): the job store keeps what it has; new work waits for expiries.
    log.warning("redis full on %s %s", request.method, request.url.path)
    return problem_response(request, 503, kind="storage-full", title="Storage full",
                            detail="the job store (Redis) is full; retry after some results have expired",
                            headers={"Retry-After": str(request.app.state.settings.storage_full_retry_after)})


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(redis.ConnectionError, _redis_down)
    app.add_exception_handler(redis.TimeoutError, _redis_down)
    app.add_exception_handler(redis.exceptions.OutOfMemoryError, _redis_full)
